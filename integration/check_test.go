//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/check"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// TestCheck runs trellis check against a real server and proxies: a clean
// mesh passes (exit 0); then each kind of problem is planted, and check
// names each one, where it is and what to do, and exits 1. trellis apply
// warns of the planted resources' problems and applies them all the same.
func TestCheck(t *testing.T) {
	s := startServer(t)
	web, client := startApp(t, "web"), startApp(t, "client")
	applyYAML(t, s, `kind: Service
name: web
spec: {protocol: http}
---
kind: Service
name: client
spec: {protocol: http}
---
kind: Intention
name: client.web
spec: {source: client, destination: web, action: allow}
---
kind: Route
name: web
spec:
  rules:
    - targets: [{version: v1, weight: 100}]
`)
	s.startProxy(t, proxyOpts{service: "web", appPort: web.port, extra: []string{"--version", "v1"}})
	_, upPort := loopAddr(t)
	s.startProxy(t, proxyOpts{service: "client", appPort: client.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	trellistest.Eventually(t, 20*time.Second, "web healthy, every proxy on its snapshot", func() error {
		return meshSettled(t, s)
	})

	// A clean mesh: exit 0, nothing but ok findings, the data dir's
	// secrets private.
	if out, code := s.cli(t, "check", "--data-dir", s.dataDir); code != 0 || !strings.Contains(out, "all checks passed") {
		t.Fatalf("check of a clean mesh: exit %d, want 0:\n%s", code, out)
	}

	// Planted: a Route weighting a version with no instance and an
	// Intention to a service that does not exist. apply warns, and applies.
	dir := t.TempDir()
	planted := filepath.Join(dir, "planted.yaml")
	writeFile(planted, `kind: Route
name: web
spec:
  rules:
    - targets: [{version: v1, weight: 75}, {version: v3, weight: 25}]
---
kind: Intention
name: client.billing
spec: {source: client, destination: billing, action: allow}
`)
	out, code := s.cli(t, "apply", "-f", planted)
	for _, w := range []string{
		"Route/web applied", "Intention/client.billing applied",
		`trellis apply: warning: Route/web: rule-1 sends 25 % to version "v3" of web, which has no instance`,
		`trellis apply: warning: Intention/client.billing: its destination "billing" is no service of the mesh`,
		"applied all the same",
	} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("apply of planted resources: exit %d, want 0 and %q in:\n%s", code, w, out)
		}
	}

	// A gateway whose target never becomes healthy: nothing listens on
	// site's app port.
	gwPort, gwAdmin := trellistest.FreePort(t), trellistest.FreePort(t)
	applyYAML(t, s, fmt.Sprintf(`kind: Gateway
name: front
spec:
  listeners:
    - port: %d
      protocol: http
      routes: [{pathPrefix: /, service: site}]
`, gwPort))
	s.startProxy(t, proxyOpts{service: "site", appPort: trellistest.FreePort(t)})
	start(t, "gateway", nil, "gateway", "--name", "front", "--listen-addr", "127.0.0.1",
		"--server", s.addr, "--ca-file", s.caFile, "--token-file", s.tokenFile(t, "front"),
		"--admin-port", strconv.Itoa(gwAdmin), "--log-level", "debug")

	// The context file of a trellis up (here: pointing at this server)
	// names an admin token file every user can read.
	home := t.TempDir()
	token := filepath.Join(dir, "admin-token")
	writeFile(token, s.admin)
	if err := os.Chmod(token, 0o644); err != nil {
		t.Fatal(err)
	}
	ctxJSON, _ := json.Marshal(map[string]any{"addr": s.addr, "caFile": s.caFile, "tokenFile": token, "pid": s.pid()})
	os.MkdirAll(filepath.Join(home, ".trellis"), 0o700)
	writeFile(filepath.Join(home, ".trellis", "context.json"), string(ctxJSON))
	env := []string{"HOME=" + home, "TRELLIS_ADDR=", "TRELLIS_TOKEN=", "TRELLIS_CACERT="}

	// A proxy with an upstream no service of the mesh has, frozen
	// (SIGSTOP) before its next snapshot: cache starting changes its
	// paths, so its status (sent, not acknowledged) is written at once.
	// The server drops a frozen proxy's stream after two missed HTTP/2
	// PINGs (about 6 s): what follows runs within that.
	_, wbePort := loopAddr(t)
	_, cachePort := loopAddr(t)
	frozen := s.startProxy(t, proxyOpts{service: "cold", appPort: client.port, upstreams: []string{fmt.Sprintf("wbe:%d", wbePort), fmt.Sprintf("cache:%d", cachePort)}})
	trellistest.Eventually(t, 20*time.Second, "cold on its snapshot", func() error { return meshSettled(t, s) })
	frozenAt := time.Now()
	frozen.cmd.Process.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { frozen.cmd.Process.Signal(syscall.SIGCONT) })
	s.startProxy(t, proxyOpts{service: "cache", appPort: client.port})
	coldID := ""
	trellistest.Eventually(t, 5*time.Second, "cold shown behind its snapshot", func() error {
		ps, err := s.api.Proxies(t.Context())
		if err != nil {
			return err
		}
		for _, p := range ps {
			if p.Service == "cold" && p.SentVersion != p.AckedVersion {
				coldID = p.Instance
				return nil
			}
		}
		return fmt.Errorf("cold not behind: %+v", ps)
	})
	t.Logf("cold shown behind %v after it froze", time.Since(frozenAt).Round(time.Millisecond))

	// For people: problems first, each with what to do, and a count; a
	// proxy behind is a warning when check does not wait.
	out, code = runCLI(t, env, "check", "--wait", "0")
	if code != 1 || !strings.HasPrefix(out, "error") || !strings.Contains(out, "fix: start web version v3") || !strings.Contains(out, "the mesh has problems") {
		t.Errorf("check (text): exit %d, want 1, errors first with fixes:\n%s", code, out)
	}
	if !strings.Contains(out, "proxy "+coldID+": behind (status up to 5s old)") {
		t.Errorf("check --wait 0: no warning that %s is behind:\n%s", coldID, out)
	}

	// Watched for 2 s without progress, it is an error. Connected through
	// the context file alone.
	out, code = runCLI(t, env, "check", "-o", "json", "--wait", "2s")
	t.Logf("check -o json --wait 2s done %v after cold froze", time.Since(frozenAt).Round(time.Millisecond))
	if code != 1 {
		t.Errorf("check of the planted mesh: exit %d, want 1:\n%s", code, out)
	}
	var got []check.Finding
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &got); err != nil {
		t.Fatalf("check -o json: %v:\n%s", err, out)
	}
	for _, w := range []struct {
		sev          check.Severity
		check, where string
		what         string
	}{
		{check.OK, "server", s.addr, "context.json"},
		{check.Error, "routes", "Route/web", `rule-1 sends 25 % to version "v3" of web, which has no instance`},
		{check.Warning, "intentions", "Intention/client.billing", `destination "billing" is no service of the mesh`},
		{check.Error, "upstreams", "proxy " + coldID, `upstream "wbe" is no service of the mesh (no Service resource, no instance): every call to it fails (did you mean "web"?)`},
		{check.Error, "proxies", "proxy " + coldID, "has not applied snapshot"},
		{check.Error, "gateways", "Gateway/front", "listener http:" + strconv.Itoa(gwPort) + ": none of the 1 targets of site is healthy"},
		{check.Error, "files", token, "the admin token has mode 0644: other users can read the secret in it"},
	} {
		found := false
		for _, f := range got {
			if f.Severity == w.sev && f.Check == w.check && f.Where == w.where && strings.Contains(f.What, w.what) && (f.Fix != "" || f.Severity == check.OK) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %s %s finding at %q saying %q (with a fix), in:\n%s", w.sev, w.check, w.where, w.what, out)
		}
	}
}

// meshSettled says why the mesh is not yet settled: an instance
// unhealthy (site aside: its app never answers) or a proxy behind its
// snapshot.
func meshSettled(t *testing.T, s *server) error {
	ins, err := s.api.Instances(t.Context(), "")
	if err != nil {
		return err
	}
	for _, i := range ins {
		if !i.Healthy && i.Service != "site" {
			return fmt.Errorf("instance %s of %s unhealthy", i.ID, i.Service)
		}
	}
	ps, err := s.api.Proxies(t.Context())
	if err != nil {
		return err
	}
	for _, p := range ps {
		if p.SentVersion != p.AckedVersion {
			return fmt.Errorf("proxy %s: sent %s, acked %s", p.Instance, p.SentVersion, p.AckedVersion)
		}
	}
	return nil
}
