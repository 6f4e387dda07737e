//go:build !proxyonly

package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestImportExitCodes: 0 when everything carried, 1 when something was
// dropped (written unless --strict), 2 when unreadable (nothing written).
func TestImportExitCodes(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("Resources:\n  S:\n    Type: AWS::AppMesh::Nope\n"), 0o644)
	for _, tc := range []struct {
		name  string
		args  []string
		code  int
		wrote bool
	}{
		{"carried", []string{"-f", "../appmesh/testdata/hello.cfn.yaml"}, 0, true},
		{"dropped", []string{"-f", "../appmesh/testdata/protocols.cfn.json"}, 1, true},
		{"dropped strict", []string{"-f", "../appmesh/testdata/protocols.cfn.json", "--strict"}, 1, false},
		{"unreadable", []string{"-f", bad}, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			var out, errb bytes.Buffer
			code := Main(append([]string{"import", "appmesh", "-o", dir}, tc.args...), &out, &errb)
			if code != tc.code {
				t.Errorf("got exit %d, want %d; stderr:\n%s", code, tc.code, errb.String())
			}
			_, err := os.Stat(filepath.Join(dir, "services.yaml"))
			if wrote := err == nil; wrote != tc.wrote {
				t.Errorf("got written %v, want %v", wrote, tc.wrote)
			}
		})
	}
}
