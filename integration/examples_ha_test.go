//go:build linux

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// serverFlags returns the flags trellis server takes, from its help.
func serverFlags(t *testing.T) map[string]bool {
	t.Helper()
	out, _ := exec.Command(bin, "server", "--help").CombinedOutput()
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if len(flags) < 10 {
		t.Fatalf("trellis server --help lists %d flags: %s", len(flags), out)
	}
	return flags
}

// checkFlags fails for every --flag in args that trellis server lacks.
func checkFlags(t *testing.T, where string, args []string, flags map[string]bool) {
	t.Helper()
	for _, a := range args {
		name, ok := strings.CutPrefix(a, "--")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, "=")
		if !flags[name] {
			t.Errorf("%s: trellis server has no flag --%s", where, name)
		}
	}
}

// The Kubernetes manifests of examples/ha parse, each document names its
// kind, and the server's arguments are flags trellis server takes.
func TestHAKubernetesManifests(t *testing.T) {
	flags := serverFlags(t)
	files, _ := filepath.Glob("../examples/ha/kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests")
	}
	kinds := map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range strings.Split(string(b), "\n---\n") {
			var obj struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name string `json:"name"`
				} `json:"metadata"`
				Spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Name string   `json:"name"`
								Args []string `json:"args"`
							} `json:"containers"`
						} `json:"spec"`
					} `json:"template"`
				} `json:"spec"`
			}
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Errorf("%s document %d: %v", f, i+1, err)
				continue
			}
			if obj.APIVersion == "" || obj.Kind == "" || obj.Metadata.Name == "" {
				t.Errorf("%s document %d: apiVersion %q, kind %q, name %q; want all three", f, i+1, obj.APIVersion, obj.Kind, obj.Metadata.Name)
			}
			kinds[obj.Kind]++
			for _, c := range obj.Spec.Template.Spec.Containers {
				if len(c.Args) > 0 && c.Args[0] == "server" {
					checkFlags(t, f+" container "+c.Name, c.Args[1:], flags)
				}
			}
		}
	}
	for _, k := range []string{"Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "NetworkPolicy"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in the manifests", k)
		}
	}
}

// The packaged server unit (packaging/systemd/, the one the Debian
// package installs) with the HA example's server.env passes
// systemd-analyze verify (when it is installed), and the flags of both
// exist in trellis server.
func TestHASystemdUnit(t *testing.T) {
	unit, err := os.ReadFile("../packaging/systemd/trellis-server.service")
	if err != nil {
		t.Fatal(err)
	}
	exec_ := regexp.MustCompile(`(?m)^ExecStart=(.*)$`).FindStringSubmatch(string(unit))
	if exec_ == nil {
		t.Fatal("no ExecStart")
	}
	args := strings.Fields(exec_[1])
	if len(args) < 2 || args[0] != "/usr/bin/trellis" || args[1] != "server" {
		t.Fatalf("ExecStart %q: want /usr/bin/trellis server ...", args)
	}
	if args[len(args)-1] != "$TRELLIS_SERVER_ARGS" {
		t.Fatalf("ExecStart %q: want the flags of server.env last ($TRELLIS_SERVER_ARGS)", args)
	}
	checkFlags(t, "trellis-server.service", args[2:len(args)-1], serverFlags(t))
	// server.env as systemd reads it: a line ending in \ goes on.
	env, err := os.ReadFile("../examples/ha/systemd/server.env")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^TRELLIS_SERVER_ARGS=(.*)$`).FindStringSubmatch(strings.ReplaceAll(string(env), "\\\n", " "))
	if m == nil {
		t.Fatal("server.env: no TRELLIS_SERVER_ARGS=")
	}
	envArgs := strings.Fields(m[1])
	if len(envArgs) < 10 {
		t.Fatalf("server.env: TRELLIS_SERVER_ARGS %q: want the HA server's flags", envArgs)
	}
	checkFlags(t, "server.env", envArgs, serverFlags(t))
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed")
	}
	// Verified with this test's binary where the unit expects it.
	dir := t.TempDir()
	f := filepath.Join(dir, "trellis-server.service")
	os.WriteFile(f, []byte(strings.Replace(string(unit), "/usr/bin/trellis", bin, 1)), 0o644)
	if out, err := exec.Command("systemd-analyze", "verify", f).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v: %s", err, out)
	}
}
