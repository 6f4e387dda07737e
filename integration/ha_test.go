//go:build linux

package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// startEtcd runs Debian's etcd on free loopback ports and returns its URL.
func startEtcd(t *testing.T) string {
	t.Helper()
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd binary not found; install Debian's etcd-server (.ci/run does)")
	}
	client, peer := fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t)), fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))
	cmd := exec.Command(etcd, "--name", "ext", "--data-dir", filepath.Join(t.TempDir(), "etcd"),
		"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "ext=http://"+peer, "--log-level", "error")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	trellistest.Eventually(t, 20*time.Second, "etcd listening", func() error {
		c, err := net.Dial("tcp", client)
		if err == nil {
			c.Close()
		}
		return err
	})
	return "http://" + client
}

// TestHAServersOnExternalEtcd runs two stateless servers on one external
// etcd, as --etcd-endpoints does in production: a proxy on each server, and
// the calls between them work both ways; either server's API sees the whole
// mesh. The second server is given the store secret and no CA: it signs
// with the CA the first one stored, so one CA file serves the CLI against
// both.
func TestHAServersOnExternalEtcd(t *testing.T) {
	endpoint := startEtcd(t)
	a := startServer(t, "--etcd-endpoints", endpoint)
	// The second server shares the first one's CA through the store; its
	// admin token is the one the first made (stored hashed in the shared
	// etcd).
	b := startServerB(t, endpoint, a, "--store-secret-file", copySecret(t, a))
	if _, err := os.Stat(filepath.Join(b.dataDir, "admin-token")); err == nil {
		t.Error("second server made its own admin token; only the first start may")
	}
	if pa, pb := readFile(t, a.caFile), readFile(t, filepath.Join(b.dataDir, "ca.pem")); pa != pb {
		t.Errorf("the servers' ca.pem differ: a signs under\n%s\nb under\n%s", pa, pb)
	}
	if _, err := os.Stat(filepath.Join(b.dataDir, "ca-key.pem")); err == nil {
		t.Error("the second server wrote a CA key of its own")
	}

	a.mustCLI(t, "intention", "allow", "client", "web")
	web := startApp(t, "web")
	a.startProxy(t, proxyOpts{service: "web", appPort: web.port})
	up, upPort := loopAddr(t)
	b.startProxy(t, proxyOpts{service: "client", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	trellistest.Eventually(t, 10*time.Second, "call across servers", func() error {
		got, err := get(up)
		if err == nil && got != "web" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	})
	// And the other way: a proxy on b serves, one on a calls it.
	b.mustCLI(t, "intention", "allow", "caller", "api")
	apiApp := startApp(t, "api")
	b.startProxy(t, proxyOpts{service: "api", appPort: apiApp.port})
	up2, up2Port := loopAddr(t)
	a.startProxy(t, proxyOpts{service: "caller", appPort: apiApp.port, upstreams: []string{fmt.Sprintf("api:%d", up2Port)}})
	trellistest.Eventually(t, 10*time.Second, "call from a to b", func() error {
		got, err := get(up2)
		if err == nil && got != "api" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	})
	for name, s := range map[string]*server{"a": a, "b": b} {
		ins, err := s.api.Instances(t.Context(), "")
		if err != nil || len(ins) != 4 {
			t.Errorf("server %s sees %d instances (%v), want 4", name, len(ins), err)
		}
		// One CA file, a's, for the CLI against either server.
		if out, code := runCLI(t, []string{"TRELLIS_ADDR=" + s.addr, "TRELLIS_TOKEN=" + a.admin, "TRELLIS_CACERT=" + a.caFile}, "get", "services"); code != 0 {
			t.Errorf("CLI against server %s with a's ca.pem: %s", name, out)
		}
	}
	// One root in the bundle: b added none of its own.
	r, err := b.api.Roots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(r.RootsPEM, "BEGIN CERTIFICATE"); n != 1 {
		t.Errorf("the trust bundle holds %d roots, want the one shared CA's", n)
	}
	// An intention applied through one server reaches the proxy of the other.
	out, code := runCLI(t, []string{"TRELLIS_ADDR=" + b.addr, "TRELLIS_TOKEN=" + a.admin, "TRELLIS_CACERT=" + a.caFile}, "intention", "deny", "client", "web")
	if code != 0 {
		t.Fatalf("intention deny via server b: %s", out)
	}
	trellistest.Eventually(t, 5*time.Second, "deny via b applies to web's proxy on a", func() error {
		if _, err := get(up); err == nil {
			return fmt.Errorf("call still succeeds")
		}
		return nil
	})
}
