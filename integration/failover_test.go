//go:build linux

package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// startPeer starts another server on the etcd at endpoint, given a's store
// secret (servers on one etcd share its CA) and listening on addr; its API
// client is a's admin token on it.
func startPeer(t *testing.T, a *server, name, addr, endpoint string, extra ...string) *server {
	t.Helper()
	return startPeerIn(t, a, name, nil, addr, endpoint, extra...)
}

// startPeerIn is startPeer through wrap (such as ip netns exec NS).
func startPeerIn(t *testing.T, a *server, name string, wrap []string, addr, endpoint string, extra ...string) *server {
	t.Helper()
	dir := t.TempDir()
	args := append([]string{"server", "--data-dir", dir, "--listen", addr, "--etcd-endpoints", endpoint, "--log-level", "debug",
		"--store-secret-file", filepath.Join(a.dataDir, "store-secret")}, extra...)
	p := startWrapped(t, name, wrap, nil, args...)
	caPEM, _ := os.ReadFile(a.caFile)
	api, err := client.New(client.Config{Addr: addr, Token: a.admin, CAPEM: caPEM})
	if err != nil {
		t.Fatal(err)
	}
	trellistest.Eventually(t, 30*time.Second, name+" answers", func() error {
		_, err := api.Services(t.Context())
		return err
	})
	return &server{proc: p, addr: addr, dataDir: dir, caFile: a.caFile, admin: a.admin, api: api}
}

// listAPI is an API client given every server of list.
func listAPI(t *testing.T, a *server, list string) *client.Client {
	t.Helper()
	caPEM, _ := os.ReadFile(a.caFile)
	api, err := client.New(client.Config{Addr: list, Token: a.admin, CAPEM: caPEM})
	if err != nil {
		t.Fatal(err)
	}
	return api
}

// proxyStatus returns the status of the proxy of service, as api reports it.
func proxyStatus(ctx context.Context, api *client.Client, service string) (v1.ProxyStatus, error) {
	ps, err := api.Proxies(ctx)
	if err != nil {
		return v1.ProxyStatus{}, err
	}
	for _, p := range ps {
		if p.Service == service {
			return p, nil
		}
	}
	return v1.ProxyStatus{}, fmt.Errorf("no proxy of %s", service)
}

// clientLoop calls addr through a proxy at a fixed rate until stopped or
// done with its count, each call on a new connection and its own
// goroutine (so that a slow call does not slow the rest), and counts the
// calls and the failures, each failure with its time and the phase the
// test was in.
type clientLoop struct {
	ok, failed atomic.Int64
	phase      atomic.Pointer[string]
	mu         sync.Mutex
	errs       []string
	phases     []string             // in the order they began; guarded by mu
	perPhase   map[string]*[2]int64 // calls and failures; guarded by mu
	stop       context.CancelFunc
	done       chan struct{}
}

// startClientLoop calls addr 50 times a second until stopped.
func startClientLoop(t *testing.T, addr, want string) *clientLoop {
	return startRateLoop(t, addr, want, 50, 0)
}

// startRateLoop calls addr perSecond times a second, limit calls at most
// (0: until stopped); a call that does not answer want within 5s fails.
func startRateLoop(t *testing.T, addr, want string, perSecond, limit int) *clientLoop {
	ctx, cancel := context.WithCancel(context.Background())
	l := &clientLoop{stop: cancel, done: make(chan struct{}), perPhase: map[string]*[2]int64{}}
	l.setPhase("start")
	tick := time.NewTicker(time.Second / time.Duration(perSecond))
	go func() {
		defer close(l.done)
		defer tick.Stop()
		var calls sync.WaitGroup
		defer calls.Wait()
		for n := 0; limit == 0 || n < limit; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			phase := *l.phase.Load()
			calls.Go(func() {
				got, err := get(addr)
				if err == nil && got != want {
					err = fmt.Errorf("got %q", got)
				}
				l.mu.Lock()
				defer l.mu.Unlock()
				l.perPhase[phase][0]++
				if err != nil {
					l.failed.Add(1)
					l.perPhase[phase][1]++
					l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" ["+phase+"] "+err.Error())
					return
				}
				l.ok.Add(1)
			})
		}
	}()
	t.Cleanup(func() { cancel(); <-l.done })
	return l
}

// setPhase names what the test does from now on, for the failures'
// timeline.
func (l *clientLoop) setPhase(p string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perPhase[p] == nil {
		l.perPhase[p] = new([2]int64)
		l.phases = append(l.phases, p)
	}
	l.phase.Store(&p)
}

func (l *clientLoop) finish(t *testing.T) {
	t.Helper()
	l.stop()
	<-l.done
	t.Logf("client loop: %d calls, %d failed", l.ok.Load()+l.failed.Load(), l.failed.Load())
	if len(l.phases) > 1 {
		for _, p := range l.phases {
			if l.perPhase[p][0] == 0 {
				continue
			}
			t.Logf("  %-40s %6d calls, %d failed", p, l.perPhase[p][0], l.perPhase[p][1])
		}
	}
	if n := l.failed.Load(); n > 0 {
		t.Errorf("%d calls failed, want none; the first of them:\n%s", n, strings.Join(l.errs[:min(len(l.errs), 40)], "\n"))
	}
}

// waitMoved waits until the proxy of service is on a server of live, as
// the API reports it, and returns how long that took.
func waitMoved(t *testing.T, api *client.Client, service string, live []string, within time.Duration) (v1.ProxyStatus, time.Duration) {
	t.Helper()
	began := time.Now()
	var st v1.ProxyStatus
	trellistest.Eventually(t, within, service+"'s proxy on a live server", func() error {
		s, err := proxyStatus(t.Context(), api, service)
		if err != nil {
			return err
		}
		if !slices.Contains(live, s.Server) {
			return fmt.Errorf("on %s, want one of %v", s.Server, live)
		}
		st = s
		return nil
	})
	return st, time.Since(began)
}

// TestProxyFailsOverAcrossServers gives proxies three servers on one
// external etcd, kills the server the client's proxy is on, then stops the
// one it moved to: each time the proxy is on a live server within seconds,
// and a steady client loop through it loses no call.
func TestProxyFailsOverAcrossServers(t *testing.T) {
	endpoint := startEtcd(t)
	a := startServer(t, "--etcd-endpoints", endpoint)
	b := startPeer(t, a, "server-b", fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t)), endpoint)
	c := startPeer(t, a, "server-c", fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t)), endpoint)
	servers := map[string]*server{a.addr: a, b.addr: b, c.addr: c}
	list := strings.Join([]string{a.addr, b.addr, c.addr}, ",")
	api := listAPI(t, a, list)

	a.mustCLI(t, "intention", "allow", "client", "web")
	web := startApp(t, "web")
	a.startProxy(t, proxyOpts{service: "web", appPort: web.port, extra: []string{"--server", list}})
	up, upPort := loopAddr(t)
	a.startProxy(t, proxyOpts{service: "client", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}, extra: []string{"--server", list}})
	trellistest.Eventually(t, 15*time.Second, "call through the mesh", func() error {
		got, err := get(up)
		if err == nil && got != "web" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	})
	loop := startClientLoop(t, up, "web")

	live := []string{a.addr, b.addr, c.addr}
	for _, step := range []struct {
		how string
		sig syscall.Signal
	}{{"killed", syscall.SIGKILL}, {"stopped", syscall.SIGTERM}} {
		st, err := proxyStatus(t.Context(), api, "client")
		if err != nil {
			t.Fatal(err)
		}
		on := servers[st.Server]
		if on == nil {
			t.Fatalf("client's proxy is on %q, not one of %v", st.Server, live)
		}
		live = slices.DeleteFunc(live, func(s string) bool { return s == on.addr })
		sent := time.Now()
		on.kill(step.sig) // returns once the process has exited
		moved, _ := waitMoved(t, api, "client", live, 5*time.Second)
		t.Logf("server %s %s: client's proxy on %s %v after the signal", on.addr, step.how, moved.Server, time.Since(sent).Round(time.Millisecond))
		waitMoved(t, api, "web", live, 5*time.Second)
		// Calls keep going for a while on the new servers.
		n := loop.ok.Load()
		trellistest.Eventually(t, 5*time.Second, "calls after the move", func() error {
			if loop.ok.Load() < n+25 {
				return errors.New("fewer than 25 calls")
			}
			return nil
		})
	}
	loop.finish(t)
}

// TestProxiesSpreadOverDNSName gives proxies one DNS name with three A
// records (a hosts file bind-mounted over /etc/hosts in their own mount
// namespace): they spread over the three servers behind it, where they
// all sat on the first address before.
func TestProxiesSpreadOverDNSName(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare not found")
	}
	const name = "cp.trellis.test"
	endpoint := startEtcd(t)
	port := freePortOn(t, "127.0.0.1", "127.0.0.2", "127.0.0.3")
	addr := func(ip string) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }
	a := startServerOn(t, addr("127.0.0.1"), "--etcd-endpoints", endpoint, "--advertise", name)
	startPeer(t, a, "server-b", addr("127.0.0.2"), endpoint, "--advertise", name)
	startPeer(t, a, "server-c", addr("127.0.0.3"), endpoint, "--advertise", name)
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := writeFile(hosts, "127.0.0.1 localhost\n127.0.0.1 "+name+"\n127.0.0.2 "+name+"\n127.0.0.3 "+name+"\n"); err != nil {
		t.Fatal(err)
	}
	// Runs bin with the hosts file as /etc/hosts, for it alone.
	wrap := []string{"unshare", "--mount", "--propagation", "private", "sh", "-c", `mount --bind "$FO_HOSTS" /etc/hosts && exec "$@"`, "sh"}
	web := startApp(t, "web")
	const n = 8
	for i := range n {
		svc := fmt.Sprintf("spread%d", i)
		admin := trellistest.FreePort(t)
		p := &sidecar{proc: startWrapped(t, "proxy-"+svc, wrap, []string{"FO_HOSTS=" + hosts},
			"proxy", "--service", svc, "--app-port", strconv.Itoa(web.port),
			"--server", net.JoinHostPort(name, strconv.Itoa(port)), "--ca-file", a.caFile, "--token-file", a.tokenFile(t, svc),
			"--state-dir", t.TempDir(), "--admin-port", strconv.Itoa(admin), "--log-level", "debug"),
			admin: fmt.Sprintf("127.0.0.1:%d", admin)}
		p.waitReady(t)
	}
	on := map[string]int{}
	trellistest.Eventually(t, 15*time.Second, "every proxy's status", func() error {
		ps, err := a.api.Proxies(t.Context())
		if err != nil {
			return err
		}
		clear(on)
		for _, p := range ps {
			if strings.HasPrefix(p.Service, "spread") {
				on[p.Server]++
			}
		}
		if got := on[addr("127.0.0.1")] + on[addr("127.0.0.2")] + on[addr("127.0.0.3")]; got != n {
			return fmt.Errorf("%d of %d proxies on the name's servers (%v)", got, n, on)
		}
		return nil
	})
	t.Logf("proxies per server: %v", on)
	if len(on) < 2 {
		t.Errorf("all %d proxies on one server (%v), want them spread over the name's addresses", n, on)
	}
}

// freePortOn returns a port free on every one of ips.
func freePortOn(t *testing.T, ips ...string) int {
	t.Helper()
	for range 50 {
		port := trellistest.FreePort(t)
		free := true
		for _, ip := range ips {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return port
		}
	}
	t.Fatal("no port free on all of", ips)
	return 0
}

// TestProxyReconnectsSecondsAfterOutage holds the control plane down for
// 30s, long enough for the old backoff (its own, to 30s, stacked on gRPC's,
// to 120s) to grow past 15s, then brings it back: every one of five
// proxies has its stream back within reconnectCap (5s) and a little. With
// the old backoff each proxy had about one chance in three to be that
// quick, all five about one in 400.
func TestProxyReconnectsSecondsAfterOutage(t *testing.T) {
	s := startServer(t)
	web := startApp(t, "web")
	const n = 5
	for i := range n {
		s.startProxy(t, proxyOpts{service: fmt.Sprintf("back%d", i), appPort: web.port})
	}
	s.kill(syscall.SIGKILL)
	// The outage is the scenario, not a wait for an event: the longer
	// it lasts, the longer the old backoff had grown.
	outage := time.NewTimer(30 * time.Second)
	<-outage.C
	s.run()
	s.waitUp(t)
	back := time.Now()
	took := map[string]time.Duration{}
	trellistest.Eventually(t, 60*time.Second, "proxies reconnected", func() error {
		ps, err := s.api.Proxies(t.Context())
		if err != nil {
			return err
		}
		for _, p := range ps {
			if _, ok := took[p.Service]; !ok && strings.HasPrefix(p.Service, "back") && p.ConnectedAt.After(back.Add(-time.Second)) {
				took[p.Service] = time.Since(back)
			}
		}
		if len(took) < n {
			return fmt.Errorf("%d of %d proxies back", len(took), n)
		}
		return nil
	})
	t.Logf("proxies reconnected after the server was back: %v", took)
	for svc, d := range took {
		if d > 7*time.Second {
			t.Errorf("%s reconnected %v after the server was back, want within 7s (backoff capped at 5s)", svc, d.Round(time.Millisecond))
		}
	}
}

// TestProxyKeepsPublicPort restarts a proxy with --public-port 0: it takes
// its persisted port again, so that callers holding its old endpoint reach
// it, and another one only when that port is taken.
func TestProxyKeepsPublicPort(t *testing.T) {
	s := startServer(t)
	web := startApp(t, "web")
	p := s.startProxy(t, proxyOpts{service: "web", appPort: web.port, extra: []string{"--instance", "web-1", "--public-port", "0"}})
	port := func(after time.Time) int {
		t.Helper()
		var got int
		trellistest.Eventually(t, 15*time.Second, "web registered", func() error {
			ins, err := s.api.Instances(t.Context(), "web")
			if err != nil || len(ins) != 1 || !ins[0].RegisteredAt.After(after) {
				return fmt.Errorf("instances %v (%v), want one registered after %v", ins, err, after)
			}
			got = ins[0].Port
			return nil
		})
		return got
	}
	first := port(time.Time{})
	// The state file holds the port once a snapshot was applied.
	trellistest.Eventually(t, 10*time.Second, "state saved", func() error {
		b, err := os.ReadFile(filepath.Join(p.stateDir, "proxy-state.json"))
		if err != nil || !strings.Contains(string(b), fmt.Sprintf(`"publicPort":%d`, first)) {
			return fmt.Errorf("state file without the port (%v)", err)
		}
		return nil
	})

	// restart stops the proxy, runs between, and starts it again.
	restart := func(between func()) time.Time {
		p.kill(syscall.SIGTERM)
		between()
		at := time.Now().Add(-time.Second) // the server's timestamps are its own
		p.run()
		p.waitReady(t)
		return at
	}
	if got := port(restart(func() {})); got != first {
		t.Errorf("after a restart on port %d, want the persisted %d", got, first)
	}
	// Taken by someone else: another free port, and the proxy serves.
	var l net.Listener
	if got := port(restart(func() {
		var err error
		if l, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", first)); err != nil {
			t.Fatal(err)
		}
	})); got == first || got == 0 {
		t.Errorf("with port %d taken: registered port %d, want another", first, got)
	}
	l.Close()
	if !strings.Contains(p.logText(), "persisted public port not free") {
		t.Error("no log line for the taken port")
	}
}

// TestServerCutOffFromStoreSendsProxiesAway cuts one server off from etcd
// (its connections go through a relay the test controls): within seconds
// it says it is not serving and its proxy moves to the other server; when
// the store is back it serves again.
func TestServerCutOffFromStoreSendsProxiesAway(t *testing.T) {
	endpoint := startEtcd(t)
	relay := startRelay(t, strings.TrimPrefix(endpoint, "http://"))
	a := startServer(t, "--etcd-endpoints", "http://"+relay.addr)
	bAddr := fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))
	list := a.addr + "," + bAddr
	web := startApp(t, "web")
	// b is not up yet: the proxy's stream can only be on a.
	a.startProxy(t, proxyOpts{service: "web", appPort: web.port, extra: []string{"--server", list}})
	waitMoved(t, a.api, "web", []string{a.addr}, 10*time.Second)
	b := startPeer(t, a, "server-b", bAddr, endpoint)

	// /healthz takes no token.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: a.api.TLSConfig()}}
	health := func(addr string) int {
		resp, err := hc.Get("https://" + addr + "/healthz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := health(a.addr); got != http.StatusOK {
		t.Fatalf("a's /healthz %d before the cut, want 200", got)
	}
	relay.cut(true)
	cutAt := time.Now()
	_, took := waitMoved(t, b.api, "web", []string{b.addr}, 20*time.Second)
	t.Logf("proxy on b %v after a lost its store", took.Round(time.Millisecond))
	if got := health(a.addr); got != http.StatusServiceUnavailable {
		t.Errorf("a's /healthz %d while cut off, want 503", got)
	}
	if since := time.Since(cutAt); since > 15*time.Second {
		t.Errorf("proxy moved %v after the cut, want within 15s", since)
	}
	relay.cut(false)
	trellistest.Eventually(t, 20*time.Second, "a serving again", func() error {
		if got := health(a.addr); got != http.StatusOK {
			return fmt.Errorf("/healthz %d", got)
		}
		return nil
	})
}

// TestProxyNotHeldWhileServerFindsStoreGone: a proxy whose stream reaches
// a server in the seconds between its store going away and the server
// finding out waits in the stream's registration, a store read. When the
// server finds out, the proxy must be sent to another server, not held
// until the store is back (TestHAEndToEnd saw proxies held for 55 s of a
// 60 s loss of quorum).
func TestProxyNotHeldWhileServerFindsStoreGone(t *testing.T) {
	endpoint := startEtcd(t)
	relay := startRelay(t, strings.TrimPrefix(endpoint, "http://"))
	a := startServer(t, "--etcd-endpoints", "http://"+relay.addr)
	bAddr := fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))
	web := startApp(t, "web")
	token := a.tokenFile(t, "web")
	relay.cut(true)
	// b is not up yet: the proxy's stream can only go to a.
	p := start(t, "proxy-web", nil, "proxy", "--service", "web", "--app-port", strconv.Itoa(web.port),
		"--server", a.addr+","+bAddr, "--ca-file", a.caFile, "--token-file", token, "--state-dir", t.TempDir(),
		"--admin-port", strconv.Itoa(trellistest.FreePort(t)), "--log-level", "debug")
	trellistest.Eventually(t, 10*time.Second, "the proxy dialing a", func() error {
		if !strings.Contains(p.logText(), "dialing control plane") || !strings.Contains(p.logText(), "server="+a.addr) {
			return errors.New("not yet")
		}
		return nil
	})
	if strings.Contains(a.logText(), "store unreachable") {
		t.Fatal("a found its store gone before the proxy dialed it: the test needs the proxy there first")
	}
	b := startPeer(t, a, "server-b", bAddr, endpoint)
	waitMoved(t, b.api, "web", []string{b.addr}, 20*time.Second)
	if !strings.Contains(a.logText(), "store unreachable") {
		t.Error("the proxy moved, but a never found its store gone")
	}
}

// relay forwards TCP connections to target until cut, when it closes them
// and refuses new ones: a server cut off from etcd while etcd runs on.
type relay struct {
	addr   string
	target string
	mu     sync.Mutex
	isCut  bool
	conns  map[net.Conn]bool
}

func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{addr: l.Addr().String(), target: target, conns: map[net.Conn]bool{}}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); r.cut(true); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { r.serve(c) })
		}
	})
	return r
}

func (r *relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.isCut {
		return false
	}
	r.conns[c] = true
	return true
}

func (r *relay) serve(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer up.Close()
	if !r.track(c) || !r.track(up) {
		return
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
}

func (r *relay) cut(on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.isCut = on
	if on {
		for c := range r.conns {
			c.Close()
		}
		clear(r.conns)
	}
}

// TestProxyMovesAtStreamAge runs two servers whose streams last 2s: the
// client's proxy moves between them again and again, and keeps its
// configuration meanwhile, so calls through it never fail. (web's proxy
// is on a third server without the limit: its instance's registration
// across a move is the lease's business, not this test's.)
func TestProxyMovesAtStreamAge(t *testing.T) {
	endpoint := startEtcd(t)
	a := startServer(t, "--etcd-endpoints", endpoint)
	b := startPeer(t, a, "server-b", fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t)), endpoint, "--max-stream-age", "2s")
	c := startPeer(t, a, "server-c", fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t)), endpoint, "--max-stream-age", "2s")
	a.mustCLI(t, "intention", "allow", "client", "web")
	web := startApp(t, "web")
	a.startProxy(t, proxyOpts{service: "web", appPort: web.port})
	up, upPort := loopAddr(t)
	a.startProxy(t, proxyOpts{service: "client", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)},
		extra: []string{"--server", b.addr + "," + c.addr}})
	trellistest.Eventually(t, 15*time.Second, "call through the mesh", func() error {
		got, err := get(up)
		if err == nil && got != "web" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	})
	loop := startClientLoop(t, up, "web")
	streams := map[time.Time]string{}
	trellistest.Eventually(t, 20*time.Second, "three streams of the client's proxy", func() error {
		st, err := proxyStatus(t.Context(), a.api, "client")
		if err != nil {
			return err
		}
		if st.Server != b.addr && st.Server != c.addr {
			return fmt.Errorf("on %s", st.Server)
		}
		streams[st.ConnectedAt] = st.Server
		if len(streams) < 3 {
			return fmt.Errorf("%d streams seen", len(streams))
		}
		return nil
	})
	t.Logf("streams: %v", streams)
	loop.finish(t)
}
