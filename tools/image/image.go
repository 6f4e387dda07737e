package main

import (
	"archive/tar"
	"bytes"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// The image's user: distroless's nonroot, the UID the Kubernetes
// manifests and the injected sidecars run as.
const (
	uid  = 65532
	user = "65532:65532"
)

// Variant is one of the two images.
type Variant struct {
	name        string
	proxyOnly   bool
	description string
	cmd         []string
	env         []string
	ports       []string
	// dataDir is made, owned by the user, 0700, when set.
	dataDir string
}

var variants = map[string]Variant{
	"server": {
		name:        "server",
		description: "Trellis control plane (trellis server) and CLI",
		// The default listen address is loopback: in a container the
		// API must be reachable from outside it.
		cmd:     []string{"server", "--listen=0.0.0.0:7700"},
		env:     []string{"TRELLIS_DATA_DIR=/var/lib/trellis"},
		ports:   []string{"7700/tcp"},
		dataDir: "var/lib/trellis",
	},
	"sidecar": {
		name:        "sidecar",
		proxyOnly:   true,
		description: "Trellis sidecar proxy and gateway (the proxy-only build)",
		cmd:         []string{"proxy"},
	},
}

// Spec is what goes into an image.
type Spec struct {
	Variant  Variant
	Binary   string
	Arch     string
	Version  string
	Revision string
	// Created is every timestamp in the image.
	Created time.Time
	// Docs are copied to /usr/share/doc/trellis when they exist (the
	// license and the third-party notice travel with the binary).
	Docs []string
}

// Build makes the image: one layer FROM scratch, the OCI media types, and
// a config with the user, entrypoint and labels.
func Build(s Spec) (v1.Image, error) {
	layerTar, err := rootFS(s)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: v1.Time{Time: s.Created}, CreatedBy: "tools/image -variant " + s.Variant.name, Comment: "trellis " + s.Version},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", s.Arch
	cf.Created = v1.Time{Time: s.Created}
	ports := map[string]struct{}{}
	for _, p := range s.Variant.ports {
		ports[p] = struct{}{}
	}
	cf.Config = v1.Config{
		User:         user,
		Entrypoint:   []string{"/usr/bin/trellis"},
		Cmd:          s.Variant.cmd,
		WorkingDir:   "/home/nonroot",
		Env:          append([]string{"PATH=/usr/bin", "HOME=/home/nonroot"}, s.Variant.env...),
		ExposedPorts: ports,
		Labels: map[string]string{
			"org.opencontainers.image.title":       "trellis-" + s.Variant.name,
			"org.opencontainers.image.description": s.Variant.description,
			"org.opencontainers.image.version":     s.Version,
			"org.opencontainers.image.revision":    s.Revision,
			"org.opencontainers.image.created":     s.Created.UTC().Format(time.RFC3339),
			"org.opencontainers.image.licenses":    "Apache-2.0",
			"org.opencontainers.image.source":      "https://github.com/trellis-mesh/trellis",
		},
	}
	if len(ports) == 0 {
		cf.Config.ExposedPorts = nil
	}
	return mutate.ConfigFile(img, cf)
}

// WriteLayout writes img as an OCI image layout in dir, naming it ref,
// and returns the manifest's digest.
func WriteLayout(dir string, img v1.Image, ref string) (v1.Hash, error) {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return v1.Hash{}, fmt.Errorf("%s: not empty; give a new directory", dir)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("write layout %s: %w", dir, err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})); err != nil {
		return v1.Hash{}, fmt.Errorf("write image to %s: %w", dir, err)
	}
	return img.Digest()
}

// entry is one file or directory of the layer.
type entry struct {
	name string // relative, no leading slash
	mode int64
	uid  int
	body []byte // nil for a directory
}

// rootFS is the layer: a tar with fixed owners, modes and times, sorted
// by name, so that the same inputs give the same bytes.
func rootFS(s Spec) ([]byte, error) {
	bin, err := os.ReadFile(s.Binary)
	if err != nil {
		return nil, fmt.Errorf("binary: %w", err)
	}
	entries := []entry{
		{name: "etc/", mode: 0o755},
		// Go's user lookup and a shell-less container's tooling find the
		// user here; the home is writable for the CLI's context file.
		{name: "etc/passwd", mode: 0o644, body: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: "etc/group", mode: 0o644, body: []byte("root:x:0:\nnonroot:x:65532:\n")},
		// Go's resolver reads the order from here (as glibc would).
		{name: "etc/nsswitch.conf", mode: 0o644, body: []byte("hosts: files dns\n")},
		{name: "etc/ssl/", mode: 0o755},
		{name: "etc/ssl/certs/", mode: 0o755},
		// Public roots for what the mesh does not sign: an etcd, an OTLP
		// collector or a CA service on public certificates.
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, body: caBundle()},
		{name: "home/", mode: 0o755},
		{name: "home/nonroot/", mode: 0o700, uid: uid},
		{name: "root/", mode: 0o700},
		{name: "tmp/", mode: 0o1777},
		{name: "usr/", mode: 0o755},
		{name: "usr/bin/", mode: 0o755},
		{name: "usr/bin/trellis", mode: 0o755, body: bin},
		{name: "usr/share/", mode: 0o755},
		{name: "usr/share/doc/", mode: 0o755},
		{name: "usr/share/doc/trellis/", mode: 0o755},
	}
	for _, d := range s.Docs {
		b, err := os.ReadFile(d)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		entries = append(entries, entry{name: "usr/share/doc/trellis/" + filepath.Base(d), mode: 0o644, body: b})
	}
	if d := s.Variant.dataDir; d != "" {
		entries = append(entries, entry{name: "var/", mode: 0o755}, entry{name: "var/lib/", mode: 0o755}, entry{name: d + "/", mode: 0o700, uid: uid})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.name,
			Mode:    e.mode,
			Uid:     e.uid,
			Gid:     e.uid,
			ModTime: s.Created,
			Format:  tar.FormatPAX,
		}
		if e.body == nil {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// caBundle is the Mozilla roots from golang.org/x/crypto/x509roots, a
// module version pinned in go.mod: the same bundle on every machine that
// builds the image, unlike the build host's. Roots with constraints a PEM
// file cannot carry (distrust after a date) are left out.
func caBundle() []byte {
	var buf bytes.Buffer
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate})
	}
	return buf.Bytes()
}
