package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

// Spec is what goes into the package.
type Spec struct {
	// Root is the trellis repository root: packaging/ and the license
	// files are read from it.
	Root string
	// Binary is the full build of trellis, for /usr/bin/trellis.
	Binary string
	// Version is the package's version (semver; 1.2.3-rc.1 becomes
	// 1.2.3~rc.1, which sorts before 1.2.3 as dpkg wants).
	Version string
	// Arch is the GOARCH the binary is built for.
	Arch string
	// MTime is every timestamp in the package (SOURCE_DATE_EPOCH).
	MTime time.Time
	// Maintainer is the Maintainer field, "Name <email>" (default
	// DefaultMaintainer).
	Maintainer string
}

// DefaultMaintainer is a placeholder in a reserved domain: the project
// has no package address yet; a release sets -maintainer.
const DefaultMaintainer = "Trellis maintainers <maintainers@trellis.invalid>"

// UnitDir is where the package puts its systemd units.
const UnitDir = "/usr/lib/systemd/system"

// Conffiles are the default configuration files, kept across upgrades
// and on removal (dpkg asks before replacing one the operator changed),
// sorted as dpkg lists them.
var Conffiles = []string{"/etc/trellis/proxy/example.yaml", "/etc/trellis/server.env"}

// Info is the nfpm description of the package.
func Info(s Spec) (*nfpm.Info, error) {
	if s.Binary == "" || s.Root == "" || s.Version == "" || s.Arch == "" || s.MTime.IsZero() {
		return nil, fmt.Errorf("package spec %+v: binary, root, version, arch and mtime are required", s)
	}
	if s.Maintainer == "" {
		s.Maintainer = DefaultMaintainer
	}
	pkg := func(p string) string { return filepath.Join(s.Root, "packaging", filepath.FromSlash(p)) }
	file := func(src, dst string, mode os.FileMode, typ string) *files.Content {
		return &files.Content{Source: src, Destination: dst, Type: typ,
			FileInfo: &files.ContentFileInfo{Owner: "root", Group: "root", Mode: mode, MTime: s.MTime}}
	}
	dir := func(dst string, mode os.FileMode) *files.Content {
		return &files.Content{Destination: dst, Type: files.TypeDir,
			FileInfo: &files.ContentFileInfo{Owner: "root", Group: "root", Mode: mode, MTime: s.MTime}}
	}
	info := &nfpm.Info{
		Name:        "trellis",
		Arch:        s.Arch,
		Platform:    "linux",
		Version:     s.Version,
		Section:     "net",
		Priority:    "optional",
		Maintainer:  s.Maintainer,
		Description: "service mesh: control plane server, sidecar proxy and CLI\nTrellis gives services mutual TLS, discovery, routing and policy.\nThis package holds the trellis binary and systemd units for the\ncontrol plane (trellis-server.service) and for one sidecar proxy\nper service (trellis-proxy@NAME.service).",
		Vendor:      "Trellis",
		Homepage:    "https://github.com/trellis-mesh/trellis",
		License:     "Apache-2.0",
		MTime:       s.MTime,
		Overridables: nfpm.Overridables{
			// useradd, in postinst.
			Depends: []string{"passwd"},
			Contents: files.Contents{
				file(s.Binary, "/usr/bin/trellis", 0o755, ""),
				file(pkg("systemd/trellis-server.service"), UnitDir+"/trellis-server.service", 0o644, ""),
				file(pkg("systemd/trellis-proxy@.service"), UnitDir+"/trellis-proxy@.service", 0o644, ""),
				dir("/etc/trellis", 0o755),
				dir("/etc/trellis/proxy", 0o755),
				file(pkg("etc/server.env"), "/etc/trellis/server.env", 0o644, files.TypeConfigNoReplace),
				file(pkg("etc/proxy/example.yaml"), "/etc/trellis/proxy/example.yaml", 0o644, files.TypeConfigNoReplace),
				file(filepath.Join(s.Root, "LICENSE"), "/usr/share/doc/trellis/copyright", 0o644, ""),
				file(filepath.Join(s.Root, "THIRD_PARTY_NOTICES"), "/usr/share/doc/trellis/THIRD_PARTY_NOTICES", 0o644, ""),
			},
			Scripts: nfpm.Scripts{
				PostInstall: pkg("deb/postinst"),
				PreRemove:   pkg("deb/prerm"),
				PostRemove:  pkg("deb/postrm"),
			},
			Deb: nfpm.Deb{Compression: "gzip"},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return nil, fmt.Errorf("package contents: %w", err)
	}
	return info, nil
}

// Build writes the .deb to w.
func Build(s Spec, w io.Writer) error {
	info, err := Info(s)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := deb.Default.Package(info, &buf); err != nil {
		return fmt.Errorf("deb: %w", err)
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// FileName is the Debian name of the package file.
func FileName(s Spec) (string, error) {
	info, err := Info(s)
	if err != nil {
		return "", err
	}
	return deb.Default.ConventionalFileName(info), nil
}
