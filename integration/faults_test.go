//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// load sends requests through addr on new connections from workers
// goroutines until stop is closed, counting successes and failures.
type load struct {
	ok, failed atomic.Int64
	lastErr    atomic.Value
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startLoad(addr string, workers int) *load {
	return runLoad(workers, 5*time.Millisecond, func() (func() error, func()) {
		return func() error { _, err := get(addr); return err }, func() {}
	})
}

// runLoad runs workers goroutines, each sending with the request function
// newWorker makes (and ending with its done function), one request per
// pause, until halted.
func runLoad(workers int, pause time.Duration, newWorker func() (request func() error, done func())) *load {
	l := &load{stop: make(chan struct{})}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			request, done := newWorker()
			defer done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				if err := request(); err != nil {
					l.failed.Add(1)
					l.lastErr.Store(err.Error())
				} else {
					l.ok.Add(1)
				}
				time.Sleep(pause)
			}
		}()
	}
	return l
}

func (l *load) halt() { close(l.stop); l.wg.Wait() }

// waitOK waits until n more requests of l have succeeded.
func (l *load) waitOK(t *testing.T, n int64, what string) {
	t.Helper()
	want := l.ok.Load() + n
	trellistest.Eventually(t, 30*time.Second, what, func() error {
		if got := l.ok.Load(); got < want {
			return fmt.Errorf("%d of %d requests done (%d failed)", got, want, l.failed.Load())
		}
		return nil
	})
}

func certSerial(t *testing.T, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/certs")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c struct{ Serial string }
	json.NewDecoder(resp.Body).Decode(&c)
	return c.Serial
}

func TestRotationUnderLoad(t *testing.T) {
	// 12s certificates are renewed every ~6s: two renewals of each sidecar
	// while traffic flows.
	p := startPair(t, "--svid-ttl", "12s")
	first := map[string]string{"web": certSerial(t, p.webProxy.admin), "client": certSerial(t, p.client.admin)}
	l := startLoad(p.upstream, 4)
	// Until each sidecar has renewed twice: three serials seen.
	seen := map[string]map[string]bool{"web": {first["web"]: true}, "client": {first["client"]: true}}
	trellistest.Eventually(t, 30*time.Second, "two renewals of each sidecar", func() error {
		for name, admin := range map[string]string{"web": p.webProxy.admin, "client": p.client.admin} {
			seen[name][certSerial(t, admin)] = true
			if n := len(seen[name]); n < 3 {
				return fmt.Errorf("%s: %d certificates seen", name, n)
			}
		}
		return nil
	})
	l.halt()
	if f := l.failed.Load(); f != 0 {
		t.Errorf("%d of %d requests failed during rotation; last error: %v", f, f+l.ok.Load(), l.lastErr.Load())
	}
	if l.ok.Load() < 100 {
		t.Errorf("only %d requests succeeded; the load did not run", l.ok.Load())
	}
	for name, admin := range map[string]string{"web": p.webProxy.admin, "client": p.client.admin} {
		if now := certSerial(t, admin); now == first[name] {
			t.Errorf("%s certificate not renewed (serial %s)", name, now)
		}
	}
	t.Logf("%d requests, 0 failed, across renewals", l.ok.Load())
}

func TestControlPlaneOutage(t *testing.T) {
	p := startPair(t)
	p.srv.kill(syscall.SIGKILL)

	// Existing proxies keep serving, new connections included.
	for i := range 20 {
		if got, err := get(p.upstream); err != nil || got != "web" {
			t.Fatalf("request %d with the control plane down: %q, %v", i, got, err)
		}
	}
	// A proxy restarted during the outage serves from its state dir.
	p.client.restart()
	p.client.waitReady(t)
	trellistest.Eventually(t, 10*time.Second, "restarted proxy serves during the outage", func() error {
		got, err := get(p.upstream)
		if err == nil && got != "web" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	})

	// The control plane comes back: new registrations flow to peers again.
	p.srv.run()
	p.srv.waitUp(t)
	web2 := startApp(t, "web2")
	p.srv.startProxy(t, proxyOpts{service: "web", appPort: web2.port})
	trellistest.Eventually(t, 30*time.Second, "new instance reachable after recovery", func() error {
		seen := map[string]bool{}
		for range 20 {
			got, err := get(p.upstream)
			if err != nil {
				return err
			}
			seen[got] = true
		}
		if !seen["web2"] {
			return fmt.Errorf("only saw %v", seen)
		}
		return nil
	})
}

func TestUpstreamKilledUnderLoad(t *testing.T) {
	p := startPair(t)
	web2 := startApp(t, "web2")
	victim := p.srv.startProxy(t, proxyOpts{service: "web", appPort: web2.port})
	p.srv.waitInstances(t, 10*time.Second, "both instances in use", "web", 2)
	l := startLoad(p.upstream, 4)
	l.waitOK(t, 100, "load flowing to both instances")

	killed := time.Now()
	victim.kill(syscall.SIGKILL)
	web2.srv.Close()
	p.srv.waitInstances(t, 10*time.Second, "killed instance leaves the endpoints", "web", 1)
	t.Logf("instance removed %v after SIGKILL", time.Since(killed).Round(time.Millisecond))
	l.halt()
	during := l.failed.Load()

	after := startLoad(p.upstream, 4)
	after.waitOK(t, 200, "new connections after the removal")
	after.halt()
	if f := after.failed.Load(); f != 0 {
		t.Errorf("%d of %d new connections failed after removal; last: %v", f, f+after.ok.Load(), after.lastErr.Load())
	}
	t.Logf("failed while removing: %d of %d; after: 0 of %d", during, during+l.ok.Load(), after.ok.Load())
}

// TestFrozenProxyLeavesEndpoints freezes a proxy (SIGSTOP): its socket stays
// open, as on a network partition, so only the control plane's liveness
// checks can notice. Its instance must still vanish within 10 s.
func TestFrozenProxyLeavesEndpoints(t *testing.T) {
	p := startPair(t)
	frozenAt := time.Now()
	p.webProxy.cmd.Process.Signal(syscall.SIGSTOP)
	defer p.webProxy.cmd.Process.Signal(syscall.SIGCONT)
	p.srv.waitInstances(t, 10*time.Second, "frozen instance removed", "web", 0)
	t.Logf("frozen instance removed after %v", time.Since(frozenAt).Round(time.Millisecond))
	// Thawed, it registers again by itself.
	p.webProxy.cmd.Process.Signal(syscall.SIGCONT)
	trellistest.Eventually(t, 30*time.Second, "thawed instance back", func() error {
		_, err := get(p.upstream)
		return err
	})
}

// TestCARotationUnderLoad rotates the root CA the documented way, under
// traffic: add the new root to the trust bundle (every proxy then trusts
// both), restart the control plane with the new CA, and let the proxies
// renew onto it at half-life. No request may fail on the way.
func TestCARotationUnderLoad(t *testing.T) {
	p := startPair(t, "--svid-ttl", "12s")
	certPEM, keyPEM, err := ca.Generate("trellis.local", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	newCert, newKey := filepath.Join(dir, "new-ca.pem"), filepath.Join(dir, "new-ca-key.pem")
	os.WriteFile(newCert, certPEM, 0o644)
	os.WriteFile(newKey, keyPEM, 0o600)

	l := startLoad(p.upstream, 4)
	p.srv.mustCLI(t, "ca", "add-root", newCert)
	for _, admin := range []string{p.client.admin, p.webProxy.admin} {
		trellistest.Eventually(t, 10*time.Second, "proxy holds both roots", func() error {
			resp, err := http.Get("http://" + admin + "/config")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var c struct{ Snapshot struct{ Roots string } }
			json.NewDecoder(resp.Body).Decode(&c)
			if n := strings.Count(c.Snapshot.Roots, "BEGIN CERTIFICATE"); n != 2 {
				return fmt.Errorf("%d roots", n)
			}
			return nil
		})
	}
	p.srv.kill(syscall.SIGTERM)
	p.srv.args = append(p.srv.args, "--ca-cert", newCert, "--ca-key", newKey)
	p.srv.run()
	p.srv.waitUp(t)

	newRoot, _ := ca.ParseCertificates(certPEM)
	issuedByNew := func(admin string) error {
		resp, err := http.Get("http://" + admin + "/certs")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var c struct{ Chain string }
		json.NewDecoder(resp.Body).Decode(&c)
		chain, err := ca.ParseCertificates([]byte(c.Chain))
		if err != nil {
			return err
		}
		return chain[0].CheckSignatureFrom(newRoot[0])
	}
	trellistest.Eventually(t, 30*time.Second, "both proxies renewed onto the new CA", func() error {
		if err := issuedByNew(p.client.admin); err != nil {
			return fmt.Errorf("client: %v", err)
		}
		return issuedByNew(p.webProxy.admin)
	})
	l.waitOK(t, 100, "requests on the new CA's certificates")
	l.halt()
	if f := l.failed.Load(); f != 0 {
		t.Errorf("%d of %d requests failed across the CA rotation; last: %v", f, f+l.ok.Load(), l.lastErr.Load())
	}
	// The test's own client still holds only the old root: it learns the
	// new one as an operator would, from a source it already trusts.
	oldRoot, _ := os.ReadFile(p.srv.caFile)
	api, _ := client.New(client.Config{Addr: p.srv.addr, Token: p.srv.admin, CAPEM: append(oldRoot, certPEM...)})
	r, err := api.Roots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(r.RootsPEM, "BEGIN CERTIFICATE"); n != 2 {
		t.Errorf("trust bundle holds %d roots, want the old and the new", n)
	}
	t.Logf("%d requests, none failed, across the CA rotation", l.ok.Load())
}

// Proxies restarted with their state dirs against a rebuilt control plane
// (a new CA) hold certificates the new trust bundle does not know: they must
// renew at once, not at half-life.
func TestRebuiltControlPlaneReissues(t *testing.T) {
	p := startPair(t)
	p.client.kill(syscall.SIGKILL)
	p.webProxy.kill(syscall.SIGKILL)
	p.srv.kill(syscall.SIGKILL)

	s := startServer(t)
	s.mustCLI(t, "intention", "allow", "client", "web")
	s.startProxy(t, proxyOpts{service: "web", appPort: p.web.port, stateDir: p.webProxy.stateDir})
	up, upPort := loopAddr(t)
	s.startProxy(t, proxyOpts{service: "client", appPort: p.web.port, stateDir: p.client.stateDir,
		upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	trellistest.Eventually(t, 15*time.Second, "call through the mesh of the new CA", func() error {
		got, err := get(up)
		if err == nil && got != "web" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	})
}
