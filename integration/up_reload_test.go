//go:build linux

package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// helloYAML is examples/hello's trellis.yaml with its apps prebuilt (a
// copy outside the module cannot go run them), and without its gateway.
const helloYAML = `mesh:
  defaultPolicy: deny
services:
%s  - name: hello-backend
    command: [%[2]s/backend]
    port: 9102
    version: v2
    protocol: http
    health: {http: /health}
    env: {GREETING: Howdy}
  - name: hello-web
    command: [%[2]s/web]
    port: 9100
    version: v1
    protocol: http
    health: {http: /health}
    upstreams:
      - {service: hello-backend, port: 9191}
client:
  service: client
  upstreams:
    - {service: hello-web, port: 8080}
intentions:
  - {source: client, destination: hello-web, action: allow}
  - {source: hello-web, destination: hello-backend, action: allow}
resources: [route-100-0.yaml]
`

const helloV1 = `  - name: hello-backend
    command: [%[2]s/backend]
    port: 9101
    version: v1
    protocol: http
    health: {http: /health}
    env: {GREETING: Hello}
`

// trellis up reloads trellis.yaml (issue 23 item 1): the README's "retire
// v1 by removing its entry" keeps serving on v2 as the person routed it,
// with no 502, and says it kept their Route; a file that does not load
// changes nothing and says why.
func TestUpReloadsTrellisYAML(t *testing.T) {
	dir, bins := t.TempDir(), t.TempDir()
	for _, app := range []string{"backend", "web"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bins, app), "../examples/hello/"+app).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", app, err, out)
		}
	}
	for _, f := range []string{"route-100-0.yaml", "route-0-100.yaml"} {
		b, err := os.ReadFile("../examples/hello/" + f)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	write := func(withV1 bool) {
		v1 := ""
		if withV1 {
			v1 = fmt.Sprintf(helloV1, "", bins)
		}
		if err := os.WriteFile(filepath.Join(dir, "trellis.yaml"), fmt.Appendf(nil, helloYAML, v1, bins), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(true)
	u := startUpIn(t, t.TempDir(), dir, []int{7700, 8080, 9100, 9101, 9102, 9191})
	hello := func() (string, error) {
		resp, err := http.Get("http://127.0.0.1:8080/hello/world")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		return resp.Header.Get("X-Backend-Version"), nil
	}
	if v, err := hello(); err != nil || v != "v1" {
		t.Fatalf("with route-100-0: %q, %v; want v1", v, err)
	}
	if out, code := runCLI(t, u.env, "apply", "-f", filepath.Join(dir, "route-0-100.yaml")); code != 0 {
		t.Fatalf("apply route-0-100: %d %s", code, out)
	}
	trellistest.Eventually(t, 10*time.Second, "all on v2", func() error {
		if v, err := hello(); err != nil || v != "v2" {
			return fmt.Errorf("%q, %v", v, err)
		}
		return nil
	})

	// Retire v1 by removing its entry.
	write(false)
	trellistest.Eventually(t, 60*time.Second, "up restarted the services", func() error {
		out := u.output()
		if i := strings.Index(out, "trellis.yaml changed: restarting"); i < 0 || !strings.Contains(out[i:], "Press Ctrl-C") {
			return fmt.Errorf("output so far:\n%s", tail(out, 10))
		}
		return nil
	})
	out := u.output()
	if !strings.Contains(out, "kept your change to Route/hello-backend") {
		t.Errorf("up did not say it kept the person's Route:\n%s", tail(out, 20))
	}
	for range 50 {
		if v, err := hello(); err != nil || v != "v2" {
			t.Fatalf("after retiring v1: %q, %v; want v2, no failure", v, err)
		}
	}
	if served(9101) {
		t.Error("v1's app still serves after its entry was removed")
	}

	// A file that does not load changes nothing.
	os.WriteFile(filepath.Join(dir, "trellis.yaml"), []byte("services: [oops\n"), 0o644)
	trellistest.Eventually(t, 10*time.Second, "up says the file does not load", func() error {
		if !strings.Contains(u.output(), "does not load; still running the previous version") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if v, err := hello(); err != nil || v != "v2" {
		t.Errorf("after a bad edit: %q, %v; want v2", v, err)
	}
	u.stop(t)
}
