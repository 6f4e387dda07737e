// Command image builds the Trellis container images without a Docker
// daemon: the server (the full build) and the sidecar (the proxy-only
// build, also the gateway's image), each FROM scratch with one layer that
// holds the static binary and the few files it needs, run as the non-root
// user 65532, written as an OCI image layout directory that any registry
// client (crane, skopeo, oras) can push.
//
//	cd tools && go run ./image -variant server -o ../out/server
//	cd tools && go run ./image -variant sidecar -o ../out/sidecar
//
// The same source, Go and SOURCE_DATE_EPOCH give the same image digest:
// every timestamp is SOURCE_DATE_EPOCH (default: the commit's time), file
// owners and modes are fixed, and the binary is built with -trimpath.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"

	"github.com/trellis-mesh/trellis/tools/internal/release"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run() error {
	variant := flag.String("variant", "", "server (the full build) or sidecar (the proxy-only build)")
	out := flag.String("o", "", "directory to write the OCI image layout to (made; must not exist or be empty)")
	binary := flag.String("binary", "", "use this trellis binary instead of building one (it must match -variant)")
	version := flag.String("version", "dev", "version stamped into the binary and the image's labels")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH of the image")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", flag.Arg(0))
	}
	v, ok := variants[*variant]
	if !ok {
		return fmt.Errorf("-variant %q: want server or sidecar", *variant)
	}
	if *out == "" {
		return fmt.Errorf("-o DIR is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	root, err := release.Root()
	if err != nil {
		return err
	}
	epoch, err := release.SourceDateEpoch(ctx, root)
	if err != nil {
		return err
	}
	bin := *binary
	if bin == "" {
		tmp, err := os.MkdirTemp("", "trellis-image-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		bin = filepath.Join(tmp, "trellis")
		if err := release.Binary(ctx, release.Build{Root: root, Output: bin, ProxyOnly: v.proxyOnly, GOARCH: *arch, Version: *version}); err != nil {
			return err
		}
	}
	img, err := Build(Spec{
		Variant:  v,
		Binary:   bin,
		Arch:     *arch,
		Version:  *version,
		Revision: release.Revision(ctx, root),
		Created:  epoch,
		Docs:     []string{filepath.Join(root, "LICENSE"), filepath.Join(root, "THIRD_PARTY_NOTICES")},
	})
	if err != nil {
		return err
	}
	digest, err := WriteLayout(*out, img, "trellis-"+*variant+":"+*version)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s\n", *out, digest)
	return nil
}
