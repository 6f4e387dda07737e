package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The example pipeline against a real control plane: it validates,
// writes every output, and registers exactly the listed backends.
func TestExamplePipeline(t *testing.T) {
	s := startServer(t)
	out := t.TempDir()
	cmd := exec.Command("sh", "../examples/pipeline/pipeline.sh", "3f9c2a1b")
	cmd.Env = append(append(os.Environ(), s.env()...), "TRELLIS="+bin, "OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pipeline: %v\n%s", err, b)
	}
	for _, f := range []string{"hello-web.ecs", "hello-web.compose", "hello-backend.ecs", "hello-backend.compose"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	got := s.mustCLI(t, "get", "intentions")
	if !strings.Contains(got, "hello-web") || !strings.Contains(got, "hello-backend") {
		t.Errorf("intentions after the pipeline:\n%s", got)
	}
	if strings.Count(got, "allow") != 1 {
		t.Errorf("want exactly one allow intention (hello-web -> hello-backend):\n%s", got)
	}
}

// Exit codes: 0 valid, 1 invalid (and nothing written), 2 usage or I/O;
// --output json gives the diagnostics as data.
func TestInjectExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(bad, "Task:\n  Family: hello-web\n  Memroy: 512\nAppContainer:\n  Image: nginx:latest\n  Port: 8080\n")
	out := filepath.Join(dir, "out.json")
	pol := "../examples/pipeline/policy.yaml"
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inject", "validate", "-f", "../examples/pipeline/hello-web.yaml", "--policy", pol, "--version", "abc12345"}, 0, "valid"},
		{[]string{"inject", "ecs", "-f", bad, "--policy", pol, "--version", "abc12345", "-o", out}, 1, `bad.yaml:3:3: Task.Memroy: unknown field`},
		{[]string{"inject", "validate", "-f", bad, "--policy", pol, "--version", "abc12345", "--output", "json"}, 1, `"field": "AppContainer.Image"`},
		{[]string{"inject", "ecs", "-f", bad, "--policy", pol, "--version", "Not A Version"}, 2, "--version"},
		{[]string{"inject", "ecs", "-f", filepath.Join(dir, "missing.yaml"), "--policy", pol, "--version", "v1"}, 2, "no such file"},
		{[]string{"inject", "kubernetes-typo", "-f", bad}, 2, "inject validate|ecs|compose|mesh"},
	} {
		got, code := runCLI(t, nil, tc.args...)
		if code != tc.code || !strings.Contains(got, tc.want) {
			t.Errorf("trellis %s: exit %d, want %d with %q:\n%s", strings.Join(tc.args, " "), code, tc.code, tc.want, got)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("invalid input wrote %s (%v)", out, err)
	}
}
