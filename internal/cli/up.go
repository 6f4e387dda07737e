//go:build !proxyonly

package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/internal/control"
	"github.com/trellis-mesh/trellis/internal/sidecar"
	"github.com/trellis-mesh/trellis/internal/up"
)

func runUp(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "up", "up [DIR]   (DIR holds trellis.yaml; default .)")
	dataDir := fs.String("data-dir", "", "data dir of the mesh (default one per example directory, ~/.trellis/up/NAME-HASH, kept between runs)")
	fresh := fs.Bool("fresh", false, "start the example over: remove its data dir (store, CA, tokens) first")
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
	// Closing the terminal stops up as Ctrl-C does, apps included, unless
	// the shell was told to ignore hangups (nohup).
	if !signal.Ignored(syscall.SIGHUP) {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, syscall.SIGHUP)
		defer stop()
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
		Home: filepath.Dir(ContextFile()), Fresh: *fresh,
	})
}

func runDown(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "down", "down   (stops the trellis up of this user, started in another terminal)")
	timeout := fs.Duration("timeout", time.Minute, "how long to wait for it to stop its apps and exit")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	what, err := up.Down(ctx, filepath.Dir(ContextFile()))
	if errors.Is(err, up.ErrNotRunning) {
		fmt.Fprintln(e.stdout, "trellis up is not running")
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "Stopped trellis up (%s).\n", what)
	return nil
}
