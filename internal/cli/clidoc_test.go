//go:build !proxyonly

package cli

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the generated references under docs/reference")

// checkGenerated compares a generated file with the committed one, or
// writes it under -update.
func checkGenerated(t *testing.T, rel string, got []byte, regen string) {
	t.Helper()
	path := filepath.Join("..", "..", filepath.FromSlash(rel))
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v; make it with: %s", err, regen)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		i := 0
		for i < len(gl) && i < len(wl) && gl[i] == wl[i] {
			i++
		}
		g, w := "(end of file)", "(end of file)"
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		t.Fatalf("%s is out of date with the code, first at line %d:\n  committed: %s\n  generated: %s\nregenerate with: %s", rel, i+1, w, g, regen)
	}
}

func TestCLIReference(t *testing.T) {
	got, err := CLIReference()
	if err != nil {
		t.Fatal(err)
	}
	checkGenerated(t, CLIReferenceFile, got, "go test ./internal/cli ./api/v1 -run Reference -update")
}

// TestCLIReferenceCoversEverything checks the walk itself: every command,
// every subcommand of the groups, and flags that live only in a
// subcommand's own flag set.
func TestCLIReferenceCoversEverything(t *testing.T) {
	got, err := CLIReference()
	if err != nil {
		t.Fatal(err)
	}
	doc := string(got)
	for name := range commands() {
		if !strings.Contains(doc, "\n## trellis "+name+"\n") {
			t.Errorf("no section for trellis %s", name)
		}
	}
	for _, want := range []string{
		"### trellis token create\n", "### trellis token list\n", "### trellis token delete\n",
		"### trellis ca roots\n", "### trellis ca add-root\n", "### trellis ca rotate\n", "### trellis ca remove-root\n",
		"### trellis inject webhook\n", "### trellis inject webhook-config\n",
		"| `--ack-timeout duration` | `5m0s` |", // ca rotate's own flag set
		"| `--viewer` |",                        // token create's
		"| `--ca-file string` |",                // inject webhook-config's
		"| `--data-dir string` | `~/",           // server: a home-relative default
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("reference lacks %q", want)
		}
	}
}

func TestSubcommands(t *testing.T) {
	for _, tc := range []struct {
		group, usage string
		want         []string
	}{
		{"ca", "ca roots | ca add-root FILE | ca rotate | ca remove-root FINGERPRINT|FILE", []string{"roots", "add-root", "rotate", "remove-root"}},
		{"inject", "inject validate|ecs -f MANIFEST | inject webhook", []string{"validate", "ecs", "webhook"}},
		{"token", "token create --service NAME... | --admin | token list | token delete ID", []string{"create", "list", "delete"}},
		{"version", "version   (also trellis --version)", nil},
		{"delete", "delete KIND NAME", nil},
	} {
		t.Run(tc.group, func(t *testing.T) {
			if got := subcommands(tc.group, tc.usage); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
