package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/tools/internal/release"
)

// The committed THIRD_PARTY_NOTICES is what the module graph gives now:
// a dependency added or bumped without regenerating it fails here.
func TestNoticesCurrent(t *testing.T) {
	root, err := release.Root()
	if err != nil {
		t.Fatal(err)
	}
	want, err := Generate(t.Context(), root)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(root, FileName))
	if err != nil {
		t.Fatalf("%v: run `cd tools && go run ./notices` and commit the file", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		line := 0
		for line < len(gl) && line < len(wl) && gl[line] == wl[line] {
			line++
		}
		t.Fatalf("%s is stale (first difference at line %d): run `cd tools && go run ./notices` and commit it", FileName, line+1)
	}
	// Every module in the graph is named, with its version, and Go's
	// own license is there.
	for _, s := range []string{"Go (the standard library and runtime)", "go.etcd.io/etcd/client/v3 ", "google.golang.org/grpc "} {
		if !bytes.Contains(want, []byte("\n  "+s)) {
			t.Errorf("notice does not list %q", s)
		}
	}
}

func TestLicenseName(t *testing.T) {
	for name, want := range map[string]bool{
		"LICENSE": true, "LICENSE.md": true, "LICENCE": true, "license.txt": true,
		"LICENSE-APACHE": true, "COPYING": true, "NOTICE": true, "NOTICE.txt": true,
		"README.md": false, "license_test.go": false, "LICENSES": false, "go.mod": false,
	} {
		if got := licenseName.MatchString(name); got != want {
			t.Errorf("licenseName(%q) = %v, want %v", name, got, want)
		}
	}
}

// One text shared by two modules is written once, under both names.
func TestRenderSharesTexts(t *testing.T) {
	apache := []byte("Apache License\nVersion 2.0\n")
	out := string(render([]*Module{
		{Path: "a.example/x", Version: "v1.0.0", Licenses: []File{{Name: "LICENSE", Text: apache}}},
		{Path: "b.example/y", Version: "v2.0.0", Licenses: []File{{Name: "LICENSE", Text: apache}, {Name: "NOTICE", Text: []byte("y notice\n")}}},
	}))
	if n := strings.Count(out, "Apache License"); n != 1 {
		t.Errorf("shared license written %d times, want once:\n%s", n, out)
	}
	for _, s := range []string{"  a.example/x v1.0.0\n", "a.example/x v1.0.0 (LICENSE)\nb.example/y v2.0.0 (LICENSE)\n", "b.example/y v2.0.0 (NOTICE)\n", "y notice\n"} {
		if !strings.Contains(out, s) {
			t.Errorf("notice lacks %q:\n%s", s, out)
		}
	}
}
