package main

import (
	"archive/tar"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/trellis-mesh/trellis/tools/internal/release"
)

// Both images build as OCI layouts, twice with the same digest; their
// config runs trellis as 65532; and the binary unpacked from the image's
// layer runs: in a chroot of the unpacked image as user 65532 when the
// test is root (as in CI), else as a plain exec of the unpacked file.
func TestImages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds trellis twice: not in -short")
	}
	root, err := release.Root()
	if err != nil {
		t.Fatal(err)
	}
	const version = "1.2.3-test"
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, name := range []string{"server", "sidecar"} {
		t.Run(name, func(t *testing.T) {
			v := variants[name]
			var digests [2]v1.Hash
			var dirs [2]string
			for i := range digests {
				// Each build makes its own binary, in a directory of its
				// own: the digest covers the go build too.
				bin := filepath.Join(t.TempDir(), "trellis")
				if err := release.Binary(t.Context(), release.Build{Root: root, Output: bin, ProxyOnly: v.proxyOnly, Version: version}); err != nil {
					t.Fatal(err)
				}
				spec := Spec{Variant: v, Binary: bin, Arch: runtime.GOARCH, Version: version, Revision: "0123abcd", Created: created,
					Docs: []string{filepath.Join(root, "LICENSE"), filepath.Join(root, "THIRD_PARTY_NOTICES")}}
				img, err := Build(spec)
				if err != nil {
					t.Fatal(err)
				}
				dirs[i] = filepath.Join(t.TempDir(), "layout")
				if digests[i], err = WriteLayout(dirs[i], img, "trellis-"+name+":"+version); err != nil {
					t.Fatal(err)
				}
			}
			if digests[0] != digests[1] {
				t.Errorf("two builds of the same inputs: digests %s and %s, want one", digests[0], digests[1])
			}

			img := readLayout(t, dirs[0])
			if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
				t.Errorf("manifest media type %s, want %s", mt, types.OCIManifestSchema1)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.Config.User != "65532:65532" {
				t.Errorf("user %q, want 65532:65532", cf.Config.User)
			}
			if got := strings.Join(cf.Config.Entrypoint, " "); got != "/usr/bin/trellis" {
				t.Errorf("entrypoint %q, want /usr/bin/trellis", got)
			}
			if cf.OS != "linux" || cf.Architecture != runtime.GOARCH || !cf.Created.Time.Equal(created) {
				t.Errorf("os %s, architecture %s, created %s; want linux, %s, %s", cf.OS, cf.Architecture, cf.Created.Time, runtime.GOARCH, created)
			}
			for k, want := range map[string]string{"org.opencontainers.image.version": version, "org.opencontainers.image.licenses": "Apache-2.0"} {
				if got := cf.Config.Labels[k]; got != want {
					t.Errorf("label %s = %q, want %q", k, got, want)
				}
			}

			fs := unpack(t, img)
			checkStatic(t, filepath.Join(fs, "usr/bin/trellis"))
			for _, f := range []string{"etc/passwd", "etc/ssl/certs/ca-certificates.crt", "usr/share/doc/trellis/LICENSE", "usr/share/doc/trellis/THIRD_PARTY_NOTICES"} {
				if st, err := os.Stat(filepath.Join(fs, f)); err != nil || st.Size() == 0 {
					t.Errorf("/%s: %v, want a file in the image", f, err)
				}
			}
			if out, err := runInImage(t, fs, cf, "version"); err != nil || !strings.HasPrefix(out, "trellis "+version) {
				t.Errorf("trellis version: %v: %q, want trellis %s ...", err, out, version)
			}
			if out, err := runInImage(t, fs, cf, "proxy", "-h"); err != nil || !strings.Contains(out, "-service") {
				t.Errorf("trellis proxy -h: %v: %q, want its usage", err, out)
			}
			out, err := runInImage(t, fs, cf, "server", "-h")
			switch name {
			case "server":
				if err != nil || !strings.Contains(out, "-data-dir") {
					t.Errorf("trellis server -h: %v: %q, want its usage", err, out)
				}
			case "sidecar":
				if err == nil || !strings.Contains(out, "proxy-only build") {
					t.Errorf("trellis server -h in the sidecar: %v: %q, want the proxy-only build's refusal", err, out)
				}
			}
		})
	}
}

func readLayout(t *testing.T, dir string) v1.Image {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 {
		t.Fatalf("layout %s: %d manifests, want 1", dir, len(m.Manifests))
	}
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// unpack writes the image's filesystem to a new directory, with the
// modes (and, as root, the owners) of its layer.
func unpack(t *testing.T, img v1.Image) string {
	t.Helper()
	dir := t.TempDir()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			t.Fatalf("layer entry %q leaves the image", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			f.Close()
		default:
			t.Fatalf("layer entry %q: type %c, want files and directories only", h.Name, h.Typeflag)
		}
		os.Chmod(p, os.FileMode(h.Mode).Perm()|modeBits(h.Mode))
		if os.Geteuid() == 0 {
			os.Lchown(p, h.Uid, h.Gid)
		}
	}
	return dir
}

func modeBits(m int64) os.FileMode {
	var fm os.FileMode
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// checkStatic fails unless the ELF file asks for no interpreter and no
// shared libraries: it runs FROM scratch.
func checkStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has an ELF interpreter: not static", path)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s needs %v: not static", path, libs)
	}
}

// runInImage runs the image's entrypoint with args and the image's
// environment: chrooted into fs as the image's user when root, else the
// unpacked binary as this user.
func runInImage(t *testing.T, fs string, cf *v1.ConfigFile, args ...string) (string, error) {
	t.Helper()
	entry := cf.Config.Entrypoint[0]
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.CommandContext(t.Context(), entry, args...)
		cmd.Path = entry // resolved inside the chroot, not on the host
		cmd.Dir = cf.Config.WorkingDir
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: fs, Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	} else {
		cmd = exec.CommandContext(t.Context(), filepath.Join(fs, entry), args...)
	}
	cmd.Env = cf.Config.Env
	out, err := cmd.CombinedOutput()
	return string(out), err
}
