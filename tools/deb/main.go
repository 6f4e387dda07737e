// Command deb builds the Trellis Debian package with nfpm (as a library):
// /usr/bin/trellis (the full build: static, -trimpath), the hardened
// systemd units trellis-server.service and trellis-proxy@.service, the
// default configuration in /etc/trellis (conffiles), and a postinst that
// makes the trellis system user. Nothing is enabled or started.
//
//	cd tools && go run ./deb -version 1.2.3 -o ../out/
//
// The same source, Go and SOURCE_DATE_EPOCH (default: the commit's time)
// give the same bytes.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
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
		fmt.Fprintln(os.Stderr, "deb:", err)
		os.Exit(1)
	}
}

func run() error {
	out := flag.String("o", ".", "directory to write the .deb to (its Debian file name)")
	binary := flag.String("binary", "", "use this trellis binary (a full, static Linux build) instead of building one")
	version := flag.String("version", "0.0.0-dev", "version of the package and stamped into the binary (semver)")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH of the package")
	maintainer := flag.String("maintainer", DefaultMaintainer, "the package's Maintainer field")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", flag.Arg(0))
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
		tmp, err := os.MkdirTemp("", "trellis-deb-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		bin = filepath.Join(tmp, "trellis")
		if err := release.Binary(ctx, release.Build{Root: root, Output: bin, GOARCH: *arch, Version: *version}); err != nil {
			return err
		}
	}
	spec := Spec{Root: root, Binary: bin, Version: *version, Arch: *arch, MTime: epoch, Maintainer: *maintainer}
	name, err := FileName(spec)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := Build(spec, &buf); err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	path := filepath.Join(*out, name)
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Printf("%s sha256:%x\n", path, sha256.Sum256(buf.Bytes()))
	return nil
}
