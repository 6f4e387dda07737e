package integration

import (
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestImportAppMeshHello: the hello application written as App Mesh
// resources (a CloudFormation template with the /hello-service/ gateway
// rewrite and hello-backend at 90/10) imports with nothing left behind,
// and trellis up on the imported resources serves
// /hello-service/hello/NAME through the ingress with the split held.
// trellis up uses the example's fixed ports: run it in a private network
// namespace (see the brief: unshare -n).
func TestImportAppMeshHello(t *testing.T) {
	dir := t.TempDir()
	out, code := runCLI(t, nil, "import", "appmesh", "-f", "../internal/appmesh/testdata/hello.cfn.yaml", "-o", dir)
	if code != 0 {
		t.Fatalf("import: exit %d, want 0 (everything carried over):\n%s", code, out)
	}
	for _, f := range []string{"mesh.yaml", "services.yaml", "intentions.yaml", "routes.yaml", "gateways.yaml", "manifests/hello-web-v1.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("import wrote no %s: %v", f, err)
		}
	}
	// The apps of examples/hello, built once. trellis up declares the
	// Mesh and the Services from trellis.yaml itself; the intentions,
	// the route and the gateway are the import's.
	for _, app := range []string{"web", "backend"} {
		build := exec.Command("go", "build", "-o", filepath.Join(dir, "bin", app), "./examples/hello/"+app)
		build.Dir = ".."
		if b, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", app, err, b)
		}
	}
	web, backend := filepath.Join(dir, "bin", "web"), filepath.Join(dir, "bin", "backend")
	up := fmt.Sprintf(`mesh: {defaultPolicy: deny}
services:
  - {name: hello-backend, command: [%[2]s], port: 9101, version: v1, protocol: http, health: {http: /health}, env: {GREETING: Hello}}
  - {name: hello-backend, command: [%[2]s], port: 9102, version: v2, protocol: http, health: {http: /health}, env: {GREETING: Howdy}}
  - name: hello-web
    command: [%[1]s]
    port: 9100
    version: v1
    protocol: http
    health: {http: /health}
    upstreams: [{service: hello-backend, port: 9191}]
resources: [intentions.yaml, routes.yaml, gateways.yaml]
`, web, backend)
	if err := os.WriteFile(filepath.Join(dir, "trellis.yaml"), []byte(up), 0o644); err != nil {
		t.Fatal(err)
	}
	startUp(t, dir, []int{7700, 8000, 9100, 9101, 9102, 9191})

	const n = 1000
	counts := map[string]int{}
	client := &http.Client{}
	for i := range n {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:8000/hello-service/hello/n%d", i))
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4096)
		m, _ := resp.Body.Read(b)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b[:m]), fmt.Sprintf(", n%d!", i)) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b[:m])
		}
		counts[resp.Header.Get("X-Backend-Version")]++
	}
	// v2 gets each request with p = 0.1: over 1,000 the count is
	// binomial (mean 100, sd 9.5); 5 sd either side fails a correct
	// split about once in 1.7 million runs.
	mean, sd := n*0.1, math.Sqrt(n*0.1*0.9)
	lo, hi := int(mean-5*sd), int(mean+5*sd)
	if counts["v1"]+counts["v2"] != n || counts["v2"] < lo || counts["v2"] > hi {
		t.Errorf("got %v over %d requests; want v2 in [%d, %d] and v1 the rest", counts, n, lo, hi)
	}
	t.Logf("split over %d requests: %v", n, counts)
}
