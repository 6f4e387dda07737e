//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// etcdClient is a plain client of the test's external etcd.
func etcdClient(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// deletes counts the deletions under prefix from now on.
func deletes(t *testing.T, c *clientv3.Client, prefix string) *atomic.Int64 {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var n atomic.Int64
	wc := c.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for resp := range wc {
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					n.Add(1)
				}
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return &n
}

// waitDeleted waits for a deletion of a key under prefix.
func waitDeleted(t *testing.T, c *clientv3.Client, prefix string, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for resp := range c.Watch(ctx, prefix, clientv3.WithPrefix()) {
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete {
				return
			}
		}
	}
	t.Fatalf("no key under %s deleted within %v", prefix, within)
}

// registration reads an instance's registration record from etcd.
func registration(t *testing.T, c *clientv3.Client, svc, id string) (rec struct {
	Lease  int64
	Server string
}, ok bool) {
	t.Helper()
	r, err := c.Get(t.Context(), "/trellis/registrations/"+svc+"/"+id)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) == 0 {
		return rec, false
	}
	if err := json.Unmarshal(r.Kvs[0].Value, &rec); err != nil {
		t.Fatal(err)
	}
	return rec, true
}

// snapshotHas reports whether the proxy's applied snapshot names the
// instance.
func snapshotHas(admin, instance string) (bool, error) {
	resp, err := http.Get("http://" + admin + "/config")
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.Contains(string(b), `"`+instance+`"`), err
}

// watcher calls through a caller proxy and reads its snapshot in a loop
// until stopped, and counts failures of each.
type watcher struct {
	calls, failed, looks, missing atomic.Int64
	lastErr                       atomic.Pointer[string]
	stop                          context.CancelFunc
	wg                            sync.WaitGroup
}

func watch(up, admin, instance string, call bool) *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{stop: cancel}
	w.wg.Go(func() {
		for ctx.Err() == nil {
			if call {
				w.calls.Add(1)
				if got, err := get(up); err != nil || got != "web" {
					w.failed.Add(1)
					msg := fmt.Sprintf("got %q, %v", got, err)
					w.lastErr.Store(&msg)
				}
			}
			w.looks.Add(1)
			if has, err := snapshotHas(admin, instance); err != nil || !has {
				w.missing.Add(1)
			}
			time.Sleep(20 * time.Millisecond) // pacing, not synchronization
		}
	})
	return w
}

func (w *watcher) finish() { w.stop(); w.wg.Wait() }

// TestRegistrationOutlivesKilledServer: the server a proxy is on is
// killed, past the time its own records (and, before registrations had
// their own grace, the proxy's instance) expire; the proxy reconnects to
// it restarted, which adopts the instance's lease. A caller on the other
// server calls it throughout: its snapshot never loses the instance, no
// call fails, and the store never deletes it.
func TestRegistrationOutlivesKilledServer(t *testing.T) {
	endpoint := startEtcd(t)
	etcd := etcdClient(t, endpoint)
	grace := []string{"--registration-grace", "90s"}
	a := startServer(t, append([]string{"--etcd-endpoints", endpoint}, grace...)...)
	b := startSecondServer(t, a, endpoint, grace...)

	a.mustCLI(t, "intention", "allow", "client", "web")
	web := startApp(t, "web")
	a.startProxy(t, proxyOpts{service: "web", appPort: web.port})
	up, upPort := loopAddr(t)
	client := b.startProxy(t, proxyOpts{service: "client", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	ins, err := a.api.Instances(t.Context(), "web")
	if err != nil || len(ins) != 1 {
		t.Fatalf("web instances: %v, %v", ins, err)
	}
	id := ins[0].ID
	trellistest.Eventually(t, 15*time.Second, "call across servers", func() error {
		_, err := get(up)
		return err
	})
	before, ok := registration(t, etcd, "web", id)
	if !ok {
		t.Fatal("no registration record for web")
	}
	removed := deletes(t, etcd, "/trellis/instances/web/")
	w := watch(up, client.admin, id, true)
	defer w.finish()

	a.kill(syscall.SIGKILL)
	// A's own records go when its lease does (10s): what the instance's
	// lease did too when it was the server's.
	waitDeleted(t, etcd, "/trellis/servers/", 30*time.Second)
	a.run()
	a.waitUp(t)
	trellistest.Eventually(t, 90*time.Second, "web's proxy back on the restarted server", func() error {
		rec, ok := registration(t, etcd, "web", id)
		if !ok || rec.Server == before.Server {
			return fmt.Errorf("registration %+v (present %v), held by the killed server %s", rec, ok, before.Server)
		}
		return nil
	})
	w.finish()
	after, _ := registration(t, etcd, "web", id)
	if after.Lease != before.Lease {
		t.Errorf("the instance's lease is %x after the move, want the same %x", after.Lease, before.Lease)
	}
	if n := removed.Load(); n != 0 {
		t.Errorf("the store deleted web's instance %d times", n)
	}
	if n := w.failed.Load(); n != 0 {
		t.Errorf("%d of %d calls failed; last: %s", n, w.calls.Load(), *w.lastErr.Load())
	}
	if n := w.missing.Load(); n != 0 {
		t.Errorf("web missing from the caller's snapshot in %d of %d looks", n, w.looks.Load())
	}
	t.Logf("%d calls, %d snapshot looks, lease %x kept", w.calls.Load(), w.looks.Load(), after.Lease)
}

// TestWarmUpAfterFullRestart: the control plane is down past the
// registration grace, so the store loses every instance. When it comes
// back, the first proxy to reconnect must not get a snapshot without an
// upstream whose proxy has not reconnected yet (frozen here, to be last).
func TestWarmUpAfterFullRestart(t *testing.T) {
	endpoint := startEtcd(t)
	etcd := etcdClient(t, endpoint)
	a := startServer(t, "--etcd-endpoints", endpoint, "--registration-grace", "2s", "--warm-up", "60s")
	a.mustCLI(t, "intention", "allow", "client", "web")
	web := startApp(t, "web")
	webProxy := a.startProxy(t, proxyOpts{service: "web", appPort: web.port})
	up, upPort := loopAddr(t)
	client := a.startProxy(t, proxyOpts{service: "client", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	ins, err := a.api.Instances(t.Context(), "web")
	if err != nil || len(ins) != 1 {
		t.Fatalf("web instances: %v, %v", ins, err)
	}
	id := ins[0].ID
	trellistest.Eventually(t, 15*time.Second, "call", func() error {
		_, err := get(up)
		return err
	})
	a.kill(syscall.SIGKILL)
	waitDeleted(t, etcd, "/trellis/instances/web/", 30*time.Second)
	// web's proxy comes back last: frozen until the caller reconnected.
	webProxy.cmd.Process.Signal(syscall.SIGSTOP)
	defer webProxy.cmd.Process.Signal(syscall.SIGCONT)
	w := watch(up, client.admin, id, false)
	defer w.finish()
	a.run()
	a.waitUp(t)
	trellistest.Eventually(t, 60*time.Second, "the caller re-registered", func() error {
		out, err := a.api.Instances(t.Context(), "client")
		if err != nil || len(out) != 1 {
			return fmt.Errorf("client instances %v, %v", out, err)
		}
		return nil
	})
	// Its first snapshot from the restarted server is applied by the
	// time its status shows it.
	trellistest.Eventually(t, 30*time.Second, "the caller applied a snapshot from the restarted server", func() error {
		st, err := a.api.Proxies(t.Context())
		if err != nil {
			return err
		}
		for _, p := range st {
			if p.Service == "client" && p.AckedVersion != "" && p.AckedVersion == p.SentVersion {
				return nil
			}
		}
		return fmt.Errorf("not yet: %+v", st)
	})
	if has, err := snapshotHas(client.admin, id); err != nil || !has {
		t.Errorf("the caller's snapshot after the restart lacks web's remembered instance %s (%v)", id, err)
	}
	webProxy.cmd.Process.Signal(syscall.SIGCONT)
	a.waitInstances(t, 60*time.Second, "web re-registered", "web", 1)
	trellistest.Eventually(t, 15*time.Second, "call after web is back", func() error {
		_, err := get(up)
		return err
	})
	w.finish()
	if n := w.missing.Load(); n != 0 {
		t.Errorf("web missing from the caller's snapshot in %d of %d looks", n, w.looks.Load())
	}
	t.Logf("%d snapshot looks", w.looks.Load())
}

// startSecondServer starts another server on a's etcd with a's CA.
func startSecondServer(t *testing.T, a *server, endpoint string, extra ...string) *server {
	t.Helper()
	return startPeer(t, a, "server-b", fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t)), endpoint, extra...)
}

// TestProxyCannotTakeAnotherInstance: a second proxy with the same token
// that claims a live instance's ID is refused, and the instance stays as
// its own proxy registered it.
func TestProxyCannotTakeAnotherInstance(t *testing.T) {
	s := startServer(t)
	web := startApp(t, "web")
	token := s.tokenFile(t, "web")
	args := func(admin int) []string {
		return []string{"proxy", "--service", "web", "--instance", "web-1", "--app-port", fmt.Sprint(web.port),
			"--server", s.addr, "--ca-file", s.caFile, "--token-file", token, "--state-dir", t.TempDir(),
			"--admin-port", fmt.Sprint(admin), "--log-level", "debug", "--health-interval", "250ms"}
	}
	start(t, "proxy-web-1", nil, args(trellistest.FreePort(t))...)
	s.waitInstances(t, 30*time.Second, "web-1 registered", "web", 1)
	before, err := s.api.Instances(t.Context(), "web")
	if err != nil {
		t.Fatal(err)
	}
	second := start(t, "proxy-web-1-again", nil, args(trellistest.FreePort(t))...)
	trellistest.Eventually(t, 30*time.Second, "the second proxy refused", func() error {
		if !strings.Contains(second.logText(), "registered by another proxy") {
			return fmt.Errorf("no refusal in its log")
		}
		return nil
	})
	after, err := s.api.Instances(t.Context(), "web")
	if err != nil || len(after) != 1 || after[0].Port != before[0].Port || !after[0].RegisteredAt.Equal(before[0].RegisteredAt) {
		t.Errorf("web-1 after the second proxy: %+v (%v), want it as first registered: %+v", after, err, before)
	}
}

// A proxy restarted on its state dir takes its registration back at once:
// the claim it registered with is kept there, so the servers see the same
// proxy, not another one to hold off for the registration grace (ten
// minutes here).
func TestRestartedProxyTakesItsRegistrationBack(t *testing.T) {
	s := startServer(t, "--registration-grace", "10m")
	web := startApp(t, "web")
	p := start(t, "proxy-web-1", nil, "proxy", "--service", "web", "--instance", "web-1", "--app-port", fmt.Sprint(web.port),
		"--server", s.addr, "--ca-file", s.caFile, "--token-file", s.tokenFile(t, "web"), "--state-dir", t.TempDir(),
		"--admin-port", fmt.Sprint(trellistest.FreePort(t)), "--health-interval", "250ms")
	connectedAt := func() (time.Time, error) {
		ps, err := s.api.Proxies(t.Context())
		if err != nil {
			return time.Time{}, err
		}
		for _, x := range ps {
			if x.Instance == "web-1" {
				return x.ConnectedAt, nil
			}
		}
		return time.Time{}, fmt.Errorf("web-1 not connected")
	}
	s.waitInstances(t, 30*time.Second, "web-1 registered", "web", 1)
	first, err := connectedAt()
	if err != nil {
		t.Fatal(err)
	}
	p.restart() // SIGKILL: no goodbye; the registration stays, held for its grace
	trellistest.Eventually(t, 30*time.Second, "the restarted proxy connected again", func() error {
		at, err := connectedAt()
		if err == nil && !at.After(first) {
			err = fmt.Errorf("web-1 still shown on the stream of %v", first)
		}
		return err
	})
	if strings.Contains(p.logText(), "registered by another proxy") {
		t.Error("the restarted proxy was held off as another proxy")
	}
	s.waitInstances(t, 30*time.Second, "web-1 registered", "web", 1)
}
