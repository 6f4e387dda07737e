//go:build linux

package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/client"
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
// the call between them works; either server's API sees the whole mesh.
func TestHAServersOnExternalEtcd(t *testing.T) {
	endpoint := startEtcd(t)
	a := startServer(t, "--etcd-endpoints", endpoint)
	// The second server imports the first one's CA; its admin token is the
	// one the first made (stored hashed in the shared etcd).
	addrB := fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))
	dirB := t.TempDir()
	start(t, "server-b", nil, "server", "--data-dir", dirB, "--listen", addrB, "--etcd-endpoints", endpoint,
		"--ca-cert", a.caFile, "--ca-key", filepath.Join(a.dataDir, "ca-key.pem"))
	caPEM, _ := os.ReadFile(a.caFile)
	apiB, _ := client.New(client.Config{Addr: addrB, Token: a.admin, CAPEM: caPEM})
	trellistest.Eventually(t, 30*time.Second, "server b answers with the shared admin token", func() error {
		_, err := apiB.Services(t.Context())
		return err
	})
	if _, err := os.Stat(filepath.Join(dirB, "admin-token")); err == nil {
		t.Error("second server made its own admin token; only the first start may")
	}
	b := &server{addr: addrB, dataDir: dirB, caFile: a.caFile, admin: a.admin, api: apiB}

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
	for name, s := range map[string]*server{"a": a, "b": b} {
		ins, err := s.api.Instances(t.Context(), "")
		if err != nil || len(ins) != 2 {
			t.Errorf("server %s sees %d instances (%v), want 2", name, len(ins), err)
		}
	}
	// An intention applied through one server reaches the proxy of the other.
	out, code := runCLI(t, []string{"TRELLIS_ADDR=" + addrB, "TRELLIS_TOKEN=" + a.admin, "TRELLIS_CACERT=" + a.caFile}, "intention", "deny", "client", "web")
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
