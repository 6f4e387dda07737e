// Package release builds the trellis binary the way it ships: static
// (CGO_ENABLED=0), trimmed of local paths (-trimpath), stamped with its
// version, and reproducible: the same source, Go and options give the
// same bytes, so an image or package built from it has the same digest.
package release

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Module is the trellis module path, for -X and for finding the root.
const Module = "github.com/trellis-mesh/trellis"

// ProxyOnlyTags are the build tags of the proxy-only build, the sidecar
// and gateway image (internal/cli/proxyonly.go).
const ProxyOnlyTags = "proxyonly,grpcnotrace"

// Build says what to build.
type Build struct {
	// Root is the trellis repository root (default: found from the
	// working directory by Root).
	Root string
	// Output is the binary's path.
	Output string
	// ProxyOnly builds with ProxyOnlyTags.
	ProxyOnly bool
	// GOOS and GOARCH default to linux and this machine's architecture:
	// images and packages are Linux's.
	GOOS, GOARCH string
	// Version is stamped into the binary (cli.Version; default "dev").
	Version string
}

// Binary runs go build with the release recipe.
func Binary(ctx context.Context, b Build) error {
	if b.Output == "" {
		return errors.New("build: no output path")
	}
	if b.Root == "" {
		root, err := Root()
		if err != nil {
			return err
		}
		b.Root = root
	}
	if b.GOOS == "" {
		b.GOOS = "linux"
	}
	if b.GOARCH == "" {
		b.GOARCH = runtime.GOARCH
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	out, err := filepath.Abs(b.Output)
	if err != nil {
		return err
	}
	args := []string{"build", "-trimpath", "-buildvcs=auto",
		"-ldflags", "-s -w -X " + Module + "/internal/cli.Version=" + b.Version,
		"-o", out}
	if b.ProxyOnly {
		args = append(args, "-tags", ProxyOnlyTags)
	}
	args = append(args, "./cmd/trellis")
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = b.Root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+b.GOOS, "GOARCH="+b.GOARCH)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, msg)
	}
	return nil
}

// goTool is the go command that runs this program, so that a test built
// with one Go does not build trellis with another from PATH.
func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Root finds the trellis repository root: the nearest directory at or
// above the working directory whose go.mod declares Module.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && modulePath(b) == Module {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod of %s at or above %s", Module, dir)
		}
	}
}

func modulePath(gomod []byte) string {
	for line := range bytes.Lines(gomod) {
		if f := strings.Fields(string(line)); len(f) == 2 && f[0] == "module" {
			return f[1]
		}
	}
	return ""
}

// SourceDateEpoch is the time every file and config in an image or
// package carries: $SOURCE_DATE_EPOCH (reproducible-builds.org) if set,
// else the time of the commit checked out in root.
func SourceDateEpoch(ctx context.Context, root string) (time.Time, error) {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil || sec < 0 {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
		}
		return time.Unix(sec, 0).UTC(), nil
	}
	cmd := exec.CommandContext(ctx, "git", "log", "-1", "--format=%ct")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return time.Time{}, fmt.Errorf("no SOURCE_DATE_EPOCH and no commit time from git in %s (%v): set SOURCE_DATE_EPOCH", root, err)
	}
	sec, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("git log -1 --format=%%ct in %s: %q", root, out)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// Revision is the commit checked out in root, for an image's labels; ""
// outside a git checkout.
func Revision(ctx context.Context, root string) string {
	cmd := exec.CommandContext(ctx, "git", "rev-parse", "HEAD")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
