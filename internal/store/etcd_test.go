package store_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/store/storetest"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

var prefixes atomic.Int64

func newOn(cfg store.EtcdConfig) func(t *testing.T) store.Store {
	return func(t *testing.T) store.Store {
		cfg := cfg
		cfg.Prefix = fmt.Sprintf("/test%d", prefixes.Add(1))
		s, err := store.NewEtcd(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

func TestEmbeddedEtcd(t *testing.T) {
	e, err := store.StartEmbedded(context.Background(), store.EmbeddedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	storetest.Run(t, newOn(e.Config()))
}

// TestExternalEtcd runs the same suite against a separate etcd server
// process, as a production deployment with --etcd-endpoints would use.
func TestExternalEtcd(t *testing.T) {
	storetest.Run(t, newOn(store.EtcdConfig{Endpoints: []string{startExternal(t, "http")}}))
}

// startExternal runs an etcd server process serving clients over scheme
// (http or https) with the extra flags, and returns its client URL.
func startExternal(t *testing.T, scheme string, extra ...string) string {
	t.Helper()
	url, _ := startExternalProc(t, scheme, extra...)
	return url
}

// startExternalProc is startExternal, also returning the etcd process.
func startExternalProc(t *testing.T, scheme string, extra ...string) (string, *os.Process) {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd binary not found; install Debian's etcd-server (.ci/run does)")
	}
	client, peer := freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, append([]string{
		"--name", "ext", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", scheme + "://" + client, "--advertise-client-urls", scheme + "://" + client,
		"--listen-peer-urls", "http://" + peer, "--initial-advertise-peer-urls", "http://" + peer,
		"--initial-cluster", "ext=http://" + peer, "--log-level", "error"}, extra...)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	trellistest.Eventually(t, 20*time.Second, "external etcd listening on "+client, func() error {
		c, err := net.Dial("tcp", client)
		if err == nil {
			c.Close()
		}
		return err
	})
	return scheme + "://" + client, cmd.Process
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
