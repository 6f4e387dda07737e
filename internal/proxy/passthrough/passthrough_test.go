package passthrough_test

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/net/websocket"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/passthrough"
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
	return r.targets[svc]
}

func serve(t *testing.T, reg *registry, cfg passthrough.Config) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pt := &passthrough.Listener{Config: func() passthrough.Config { return cfg }, Targets: reg.get, CheckInterval: 50 * time.Millisecond}
	go pt.Serve(l)
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
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

func TestUnhealthyTargetGetsNoConnections(t *testing.T) {
	a1, a2 := startBackend(t, "alpha.test", false), startBackend(t, "alpha.test", false)
	reg := &registry{targets: map[string][]passthrough.Target{}}
	reg.set("alpha", a1.addr, a2.addr)
	addr := serve(t, reg, passthrough.Config{Service: bySNI(map[string]string{"alpha.test": "alpha"}, ""), Services: []string{"alpha"}, TLSHealthCheck: true})
	// a2 stops answering but stays registered (its sidecar has not
	// noticed): the gateway's own check takes it out.
	a2.ln.Close()
	time.Sleep(300 * time.Millisecond) // several check intervals
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
	addr := serve(t, reg, passthrough.Config{Service: bySNI(map[string]string{"alpha.test": "alpha"}, ""), Services: []string{"alpha"}, DrainTimeout: 700 * time.Millisecond})

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
	time.Sleep(200 * time.Millisecond)
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
	// Calls across a second, many 50 ms check sweeps: each must reach a
	// target the checks keep healthy.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; i < 20; i++ {
		<-tick.C
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
		time.Sleep(150 * time.Millisecond) // several health-check sweeps
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
