package passthrough_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/websocket"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/proxy/passthrough"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// backend terminates its own TLS for name. Each connection is answered
// with "name|client-address|sha256 of what it read until the client
// half-closed", so a test sees who served it and whether the bytes arrived
// intact. With proxied, it reads a PROXY header first.
type backend struct {
	name  string
	cert  *tls.Certificate
	addr  string
	ln    net.Listener
	conns atomic.Int64 // connections that sent data and got an answer
}

func startBackend(t *testing.T, name string, proxied bool) *backend {
	t.Helper()
	cert, err := certs.SelfSigned([]string{name}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, cert: cert, addr: l.Addr().String(), ln: l}
	var ln net.Listener = l
	if proxied {
		// As a sidecar with --edge-accept-proxy-protocol: every
		// connection must start with a header.
		ln = &proxyproto.Listener{Listener: l, Policy: func(net.Addr) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil }}
	}
	ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*cert}})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				n, err := io.Copy(h, c)
				if err != nil || n == 0 {
					return // a health check, or a cut connection
				}
				b.conns.Add(1)
				fmt.Fprintf(c, "%s|%s|%x", name, c.RemoteAddr(), h.Sum(nil))
			}()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return b
}

func (b *backend) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(b.cert.Leaf)
	return p
}

// registry stands for the control plane's view of targets.
type registry struct {
	mu      sync.Mutex
	targets map[string][]passthrough.Target
	gets    int // how often the listener asked: each sweep does
}

func (r *registry) set(svc string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ts []passthrough.Target
	for _, a := range addrs {
		ts = append(ts, passthrough.Target{Addr: a})
	}
	r.targets[svc] = ts
}

func (r *registry) get(svc string) []passthrough.Target {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gets++
	return r.targets[svc]
}

// waitSweeps waits until the listener has read the registry n more times:
// with no connection being made meanwhile, n health-check sweeps of a
// one-service listener.
func (r *registry) waitSweeps(t *testing.T, n int) {
	t.Helper()
	r.mu.Lock()
	want := r.gets + n
	r.mu.Unlock()
	trellistest.Eventually(t, 5*time.Second, "health-check sweeps", func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.gets < want {
			return fmt.Errorf("%d of %d registry reads", r.gets, want)
		}
		return nil
	})
}

func serve(t *testing.T, reg *registry, cfg passthrough.Config) string {
	t.Helper()
	addr, _ := serveListener(t, reg, cfg, nil)
	return addr
}

// serveListener serves a listener with a 50ms check interval, changed by
// configure first, and waits for it to stop when the test ends.
func serveListener(t *testing.T, reg *registry, cfg passthrough.Config, configure func(*passthrough.Listener)) (string, *passthrough.Listener) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pt := &passthrough.Listener{Config: func() passthrough.Config { return cfg }, Targets: reg.get, CheckInterval: 50 * time.Millisecond}
	if configure != nil {
		configure(pt)
	}
	done := make(chan struct{})
	go func() { defer close(done); pt.Serve(l) }()
	t.Cleanup(func() {
		l.Close()
		<-done
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		pt.Drain(ctx)
	})
	return l.Addr().String(), pt
}

// logBuffer is a log destination safe for concurrent writes.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitLog waits until the log has a line with every one of want.
func waitLog(t *testing.T, logs *logBuffer, want ...string) {
	t.Helper()
	trellistest.Eventually(t, 5*time.Second, "log line "+strings.Join(want, " "), func() error {
	lines:
		for _, line := range strings.Split(logs.String(), "\n") {
			for _, w := range want {
				if !strings.Contains(line, w) {
					continue lines
				}
			}
			return nil
		}
		return fmt.Errorf("log: %q", logs.String())
	})
}

// brokenBackend accepts TCP connections and closes them at once: it is
// reachable, and fails every TLS handshake.
func brokenBackend(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return trellistest.Serve(t, l, func(net.Conn) {})
}

func bySNI(m map[string]string, def string) func(string) (string, bool) {
	return func(sni string) (string, bool) {
		if s, ok := m[sni]; ok {
			return s, true
		}
		return def, def != ""
	}
}

// call sends payload over TLS to sni through addr, half-closes, and returns
// the answer and the certificate the client saw.
func call(addr, sni string, roots *x509.CertPool, payload []byte) (string, *x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{ServerName: sni, RootCAs: roots})
	if err != nil {
		return "", nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(payload); err != nil {
		return "", nil, err
	}
	c.CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), c.ConnectionState().PeerCertificates[0], err
}

func TestRoutesBySNIWithTheBackendsOwnCertificate(t *testing.T) {
	alpha, beta := startBackend(t, "alpha.test", false), startBackend(t, "beta.test", false)
	reg := &registry{targets: map[string][]passthrough.Target{}}
	reg.set("alpha", alpha.addr)
	reg.set("beta", beta.addr)
	addr := serve(t, reg, passthrough.Config{Service: bySNI(map[string]string{"alpha.test": "alpha", "beta.test": "beta"}, ""), Services: []string{"alpha", "beta"}})

	payload := make([]byte, 3<<20)
	rand.Read(payload)
	want := fmt.Sprintf("%x", sha256.Sum256(payload))
	for _, b := range []*backend{alpha, beta} {
		// The client verifies the backend's certificate under the
		// backend's name: the gateway has no certificate of its own, and
		// the session is end to end.
		got, cert, err := call(addr, b.name, b.pool(), payload)
		if err != nil {
			t.Fatalf("%s: %v", b.name, err)
		}
		if !cert.Equal(b.cert.Leaf) {
			t.Errorf("%s: client saw another certificate", b.name)
		}
		parts := strings.Split(got, "|")
		if len(parts) != 3 || parts[0] != b.name || parts[2] != want {
			t.Errorf("%s: answer %q; want its name and the payload's hash %s", b.name, got, want)
		}
	}
	// No SNI, or an unknown one, with no default: refused.
	if _, _, err := call(addr, "", alpha.pool(), []byte("x")); err == nil {
		t.Error("ClientHello without SNI was forwarded")
	}
	if _, _, err := call(addr, "gamma.test", alpha.pool(), []byte("x")); err == nil {
		t.Error("unknown SNI was forwarded")
	}
	// Not TLS at all: closed without a byte forwarded.
	before := alpha.conns.Load() + beta.conns.Load()
	c, _ := net.Dial("tcp", addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _ := c.Read(make([]byte, 10)); n != 0 {
		t.Error("plain HTTP got an answer")
	}
	c.Close()
	if alpha.conns.Load()+beta.conns.Load() != before {
		t.Error("a non-TLS connection reached a backend")
	}
}

func TestDefaultServiceTakesHellosWithoutSNI(t *testing.T) {
	alpha := startBackend(t, "alpha.test", false)
	reg := &registry{targets: map[string][]passthrough.Target{}}
	reg.set("alpha", alpha.addr)
	addr := serve(t, reg, passthrough.Config{Service: bySNI(nil, "alpha"), Services: []string{"alpha"}})
	// Without SNI the client cannot verify a name; it checks the
	// certificate is the backend's.
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.ConnectionState().PeerCertificates[0].Equal(alpha.cert.Leaf) {
		t.Error("not the default service's certificate")
	}
}

// A registered target that takes connections but fails TLS handshakes (its
// sidecar has not noticed) is taken out by the gateway's own TLS health
// check: every connection goes to the healthy one. Without the check, the
// broken target, reachable, would be given about half of them, and they
// would fail.
func TestUnhealthyTargetGetsNoConnections(t *testing.T) {
	a1, a2 := startBackend(t, "alpha.test", false), brokenBackend(t)
	reg := &registry{targets: map[string][]passthrough.Target{}}
	reg.set("alpha", a1.addr, a2)
	var logs logBuffer
	addr, _ := serveListener(t, reg, passthrough.Config{Service: bySNI(map[string]string{"alpha.test": "alpha"}, ""), Services: []string{"alpha"}, TLSHealthCheck: true},
		func(l *passthrough.Listener) { l.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	waitLog(t, &logs, "failed its health check", "target="+a2)
	a1Before := a1.conns.Load()
	for i := 0; i < 20; i++ {
		got, _, err := call(addr, "alpha.test", a1.pool(), []byte("x"))
		if err != nil || !strings.HasPrefix(got, "alpha.test|") {
			t.Fatalf("call %d: %q, %v", i, got, err)
		}
	}
	if n := a1.conns.Load() - a1Before; n != 20 {
		t.Errorf("healthy target took %d of 20 connections", n)
	}
}

func TestDrainingTargetKeepsOpenConnections(t *testing.T) {
	a1, a2 := startBackend(t, "alpha.test", false), startBackend(t, "alpha.test", false)
	reg := &registry{targets: map[string][]passthrough.Target{}}
	reg.set("alpha", a1.addr)
	var logs logBuffer
	addr, _ := serveListener(t, reg, passthrough.Config{Service: bySNI(map[string]string{"alpha.test": "alpha"}, ""), Services: []string{"alpha"}, DrainTimeout: 700 * time.Millisecond},
		func(l *passthrough.Listener) { l.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })

	open := func() *tls.Conn {
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "alpha.test", RootCAs: a1.pool()})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// Two long-lived connections to a1; then a1 leaves the registry.
	finishes, cut := open(), open()
	reg.set("alpha", a2.addr)
	waitLog(t, &logs, "target left; draining", "target="+a1.addr)
	// New connections go to a2 only.
	got, _, err := call(addr, "alpha.test", a2.pool(), []byte("new"))
	if err != nil || !strings.HasPrefix(got, "alpha.test|") || a2.conns.Load() != 1 {
		t.Fatalf("new connection after deregistration: %q, %v (a2 has %d)", got, err, a2.conns.Load())
	}
	// One open connection finishes its exchange within the drain timeout.
	io.WriteString(finishes, "still here")
	finishes.CloseWrite()
	b, err := io.ReadAll(finishes)
	if err != nil || !strings.HasPrefix(string(b), "alpha.test|") {
		t.Errorf("draining connection did not finish: %q, %v", b, err)
	}
	// The other is still open until the drain timeout, then closed.
	start := time.Now()
	cut.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = cut.Read(make([]byte, 1))
	if err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("idle connection to the departed target: err %v after %v; want it closed at the drain timeout", err, time.Since(start))
	}
}

func TestProxyProtocolCarriesClientAddress(t *testing.T) {
	alpha := startBackend(t, "alpha.test", true)
	reg := &registry{targets: map[string][]passthrough.Target{}}
	reg.set("alpha", alpha.addr)
	addr := serve(t, reg, passthrough.Config{Service: bySNI(map[string]string{"alpha.test": "alpha"}, ""), Services: []string{"alpha"}, ProxyProtocol: true})
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "alpha.test", RootCAs: alpha.pool()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "x")
	c.CloseWrite()
	b, _ := io.ReadAll(c)
	// The backend's view of its peer is the client's own address.
	if parts := strings.Split(string(b), "|"); len(parts) != 3 || parts[1] != c.LocalAddr().String() {
		t.Errorf("backend saw %q; want the client address %s", b, c.LocalAddr())
	}
}

// A TLS health check of a target that takes the PROXY protocol must send
// a header too (LOCAL: the check's own connection), or the target never
// passes it and gets no connection.
func TestTLSHealthCheckSpeaksProxyProtocol(t *testing.T) {
	alpha := startBackend(t, "alpha.test", true)
	reg := &registry{targets: map[string][]passthrough.Target{}}
	reg.set("alpha", alpha.addr)
	addr := serve(t, reg, passthrough.Config{Service: bySNI(map[string]string{"alpha.test": "alpha"}, ""), Services: []string{"alpha"}, ProxyProtocol: true, TLSHealthCheck: true})
	// Calls between check sweeps: each must reach a target the checks
	// keep healthy. (A check without the header fails, and takes the
	// target out.)
	for i := 0; i < 20; i++ {
		reg.waitSweeps(t, 1)
		if got, _, err := call(addr, "alpha.test", alpha.pool(), []byte("x")); err != nil || !strings.HasPrefix(got, "alpha.test|") {
			t.Fatalf("call %d: %q, %v", i, got, err)
		}
	}
}

// A WebSocket over TLS (wss) through the listener is a long-lived stream
// the gateway never reads: it keeps working across health-check sweeps and
// target changes, with the backend's own certificate.
func TestWebSocketPassesThroughUntouched(t *testing.T) {
	cert, err := certs.SelfSigned([]string{"ws.test"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var upgrades atomic.Int64
	srv := httptest.NewUnstartedServer(websocket.Handler(func(ws *websocket.Conn) {
		upgrades.Add(1)
		for {
			var msg string
			if websocket.Message.Receive(ws, &msg) != nil || websocket.Message.Send(ws, "echo:"+msg) != nil {
				return
			}
		}
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	other := startBackend(t, "ws.test", false)

	reg := &registry{targets: map[string][]passthrough.Target{}}
	reg.set("ws", srv.Listener.Addr().String())
	addr := serve(t, reg, passthrough.Config{Service: bySNI(map[string]string{"ws.test": "ws"}, ""), Services: []string{"ws"}})

	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "ws.test", RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := websocket.NewConfig("wss://ws.test/", "https://ws.test/")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, conn)
	if err != nil {
		t.Fatalf("websocket handshake through the pass-through listener: %v", err)
	}
	defer ws.Close()
	for i := range 6 {
		if i == 3 {
			// Another target joins; the open stream stays where it is.
			reg.set("ws", srv.Listener.Addr().String(), other.addr)
		}
		reg.waitSweeps(t, 3) // several health-check sweeps
		msg := strings.Repeat(strconv.Itoa(i), 10000*(i+1))
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := websocket.Message.Receive(ws, &got); err != nil || got != "echo:"+msg {
			t.Fatalf("message %d: %d bytes back, %v", i, len(got), err)
		}
	}
	if n := upgrades.Load(); n != 1 {
		t.Errorf("backend saw %d upgrades, want 1", n)
	}
}

// Drain that gives up ends the dials in progress too (here to a target
// whose address drops packets), and waits for the connections'
// goroutines: none is served after it returns, not even one that was
// still dialing.
func TestDrainEndsDialsAndWaits(t *testing.T) {
	reg := &registry{targets: map[string][]passthrough.Target{}}
	reg.set("alpha", trellistest.BlackHole(t))
	m := l4.NewMetrics(prometheus.NewRegistry())
	addr, pt := serveListener(t, reg, passthrough.Config{Service: bySNI(nil, "alpha"), Services: []string{"alpha"}},
		func(l *passthrough.Listener) { l.Metrics = m; l.CheckInterval = time.Hour })
	handshake := make(chan error, 1)
	go func() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			handshake <- err
			return
		}
		defer c.Close()
		tc := tls.Client(c, &tls.Config{ServerName: "alpha.test", InsecureSkipVerify: true})
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		handshake <- tc.Handshake()
	}()
	active := m.Active.WithLabelValues("passthrough")
	trellistest.Eventually(t, 5*time.Second, "the connection served", func() error {
		if v := testutil.ToFloat64(active); v != 1 {
			return fmt.Errorf("%v active connections", v)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := pt.Drain(ctx); err == nil {
		t.Error("Drain says all ended, with a connection dialing")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Drain returned after %s, want about its 100ms", took)
	}
	if v := testutil.ToFloat64(active); v != 0 {
		t.Errorf("%v connections still served after Drain returned, want 0", v)
	}
	if err := <-handshake; err == nil {
		t.Error("the client's handshake succeeded")
	}
}
