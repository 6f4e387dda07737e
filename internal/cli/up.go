//go:build !proxyonly

package cli

import (
	"context"
	"flag"
	"path/filepath"

	"github.com/trellis-mesh/trellis/internal/control"
	"github.com/trellis-mesh/trellis/internal/sidecar"
	"github.com/trellis-mesh/trellis/internal/up"
)

func runUp(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "up", "up [DIR]   (DIR holds trellis.yaml; default .)")
	dataDir := fs.String("data-dir", "", "data dir of the mesh (default ~/.trellis/up)")
	listen := fs.String("listen", control.DefaultListen, "API address")
	// The terminal of `up` shows the summary and the apps' output; the
	// mesh's own logs are for when something is wrong.
	mkLog := logFlags(fs, e, "warn")
	// Every sidecar and gateway of the example exports its spans to the
	// same collector.
	applyTracing := tracingFlags(fs)
	if err := parse(fs, reorder(args)); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var traced sidecar.Config
	if err := applyTracing(&traced, set); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usageErr("want at most one DIR")
	}
	dir := "."
	if fs.NArg() == 1 {
		dir = fs.Arg(0)
	}
	if _, err := up.Load(dir); err != nil {
		return usageErr("%s", oneLine(err))
	}
	log, err := mkLog()
	if err != nil {
		return err
	}
	if *dataDir == "" {
		*dataDir = e.getenv("TRELLIS_UP_DATA_DIR")
	}
	if *dataDir != "" {
		if *dataDir, err = filepath.Abs(*dataDir); err != nil {
			return err
		}
	}
	return up.Run(ctx, up.Config{
		Dir: dir, DataDir: *dataDir, Listen: *listen,
		ContextFile: ContextFile(), Logger: log, Out: e.stdout, Tracing: traced.Tracing,
	})
}
