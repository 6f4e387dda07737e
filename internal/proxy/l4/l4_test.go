package l4

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// echoApp echoes every connection until EOF.
func echoApp(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return trellistest.Serve(t, l, func(c net.Conn) { io.Copy(c, c) })
}

type chain struct {
	client  string // outbound listener
	in      *Inbound
	out     *Outbound
	metrics *Metrics // both sides' metrics, registered in reg
	reg     *prometheus.Registry
	allow   func(identity.ID) authz.Decision
}

func newChain(t testing.TB, ca *trellistest.CA, serverSvc, clientSvc, expect string, allow func(identity.ID) authz.Decision) *chain {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	in := &Inbound{TLS: ca.Source(t, serverSvc).ServerConfig(nil, ALPN), Authorize: allow, Target: echoApp(t), Metrics: m}
	pl, _ := net.Listen("tcp", "127.0.0.1:0")
	go in.Serve(pl)
	t.Cleanup(func() { pl.Close() })
	pool := NewPool(0, 0, m)
	t.Cleanup(pool.Close)
	out := &Outbound{
		Service:   expect,
		Endpoints: func() []Endpoint { return []Endpoint{{Addr: pl.Addr().String(), Instance: "x"}} },
		TLS:       ca.Source(t, clientSvc).ClientConfig(certs.ExpectService(expect), ALPN),
		Pool:      pool,
		Metrics:   m,
	}
	ol, _ := net.Listen("tcp", "127.0.0.1:0")
	go out.Serve(ol)
	t.Cleanup(func() { ol.Close() })
	return &chain{client: ol.Addr().String(), in: in, out: out, metrics: m, reg: reg}
}

func roundTrip(addr string, payload []byte) ([]byte, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
	return io.ReadAll(c)
}

func allowAll(identity.ID) authz.Decision { return authz.Decision{Allow: true} }

func TestTunnelEcho(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	ch := newChain(t, ca, "web", "client", "web", allowAll)
	payload := make([]byte, 3<<20)
	rand.Read(payload)
	got, err := roundTrip(ch.client, payload)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo returned %d bytes, want the same %d", len(got), len(payload))
	}

	// Many client connections share one mTLS connection.
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got, err := roundTrip(ch.client, []byte("hi")); err != nil || string(got) != "hi" {
				t.Errorf("round trip = %q, %v", got, err)
			}
		}()
	}
	wg.Wait()
	hs := testutil.ToFloat64(ch.metrics.Handshakes.WithLabelValues("client", "ok"))
	if hs < 1 || hs > maxConnsPerEndpoint {
		t.Errorf("%v client handshakes for 51 connections, want 1..%d", hs, maxConnsPerEndpoint)
	}
}

func TestTunnelDenied(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	deny := func(identity.ID) authz.Decision { return authz.Decision{Allow: false, Reason: "default"} }
	ch := newChain(t, ca, "web", "client", "web", deny)
	got, _ := roundTrip(ch.client, []byte("hi"))
	if len(got) != 0 {
		t.Fatalf("denied connection returned %q", got)
	}
	if n := testutil.ToFloat64(ch.metrics.Connections.WithLabelValues("inbound", "client", "denied")); n != 1 {
		t.Errorf("inbound denied count = %v, want 1", n)
	}
}

func TestTunnelWrongServerIdentity(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	// The endpoint is really "db", but the client expects "web".
	ch := newChain(t, ca, "db", "client", "web", allowAll)
	got, _ := roundTrip(ch.client, []byte("hi"))
	if len(got) != 0 {
		t.Fatalf("connection to an impostor returned %q", got)
	}
	if n := testutil.ToFloat64(ch.metrics.Handshakes.WithLabelValues("client", "error")); n < 1 {
		t.Errorf("client handshake errors = %v, want >= 1", n)
	}
}

// TestHalfCloseIsBounded: the app answers and closes, the client reads the
// answer but never closes its side. Both sidecars must let go of the
// connection after the half-close timeout instead of holding it forever.
func TestHalfCloseIsBounded(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	al, _ := net.Listen("tcp", "127.0.0.1:0")
	app := trellistest.Serve(t, al, func(c net.Conn) { io.WriteString(c, "bye") })
	in := &Inbound{TLS: ca.Source(t, "web").ServerConfig(nil, ALPN), Authorize: allowAll, Target: app, HalfCloseTimeout: 200 * time.Millisecond}
	pl, _ := net.Listen("tcp", "127.0.0.1:0")
	go in.Serve(pl)
	defer pl.Close()
	pool := NewPool(0, 200*time.Millisecond, nil)
	defer pool.Close()
	out := &Outbound{
		Service: "web", Pool: pool,
		Endpoints: func() []Endpoint { return []Endpoint{{Addr: pl.Addr().String()}} },
		TLS:       ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), ALPN),
	}
	ol, _ := net.Listen("tcp", "127.0.0.1:0")
	go out.Serve(ol)

	c, err := net.Dial("tcp", ol.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The app's close reaches the client as EOF at once, not after a timeout.
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	start := time.Now()
	if got, err := io.ReadAll(c); err != nil || string(got) != "bye" {
		t.Fatalf("read %q, %v; want bye then EOF", got, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("EOF took %v after the app closed", d)
	}
	// The client keeps its side open. Both sidecars must finish anyway.
	ol.Close()
	pl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := out.Drain(ctx); err != nil {
		t.Errorf("outbound still holds the half-closed connection: %v", err)
	}
	if err := in.Drain(ctx); err != nil {
		t.Errorf("inbound still holds the half-closed stream: %v", err)
	}
}

// The circuit breaker on connections: one over maxConnections is closed at
// once, and a slot freed is usable again.
func TestMaxConnections(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	ch := newChain(t, ca, "web", "client", "web", allowAll)
	out := &Outbound{Service: "web", Endpoints: ch.out.Endpoints, TLS: ch.out.TLS, Pool: ch.out.Pool,
		MaxConnections: func() int { return 1 }}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go out.Serve(l)
	t.Cleanup(func() { l.Close() })
	ch.client = l.Addr().String()
	first, err := net.Dial("tcp", ch.client)
	if err != nil {
		t.Fatal(err)
	}
	first.Write([]byte("ping"))
	io.ReadFull(first, make([]byte, 4)) // established and counted
	second, err := net.Dial("tcp", ch.client)
	if err != nil {
		t.Fatal(err)
	}
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := second.Read(make([]byte, 1)); err == nil {
		t.Fatalf("a connection over the limit read %d bytes", n)
	}
	first.Close()
	trellistest.Eventually(t, 5*time.Second, "slot freed", func() error {
		_, err := roundTrip(ch.client, []byte("again"))
		return err
	})
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// Join between two TCP sockets copies small messages through the small
// buffer and bulk through the large one: whichever, every byte arrives in
// order, the counts are exact and half-closes pass.
func TestJoinTCPSmallThenBulk(t *testing.T) {
	client, front := tcpPair(t)
	back, app := tcpPair(t)
	counts := make(chan [2]int64, 1)
	go func() {
		a, b := Join(front, back, time.Second)
		counts <- [2]int64{a, b}
	}()
	go func() { io.Copy(app, app); app.CloseWrite() }() // echo, then EOF

	bulk := make([]byte, 4<<20)
	rand.Read(bulk)
	want := append([]byte("ping\n"), bulk...)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Write(want[:5]); err != nil {
		t.Fatal(err)
	}
	small := make([]byte, 5)
	if _, err := io.ReadFull(client, small); err != nil || string(small) != "ping\n" {
		t.Fatalf("small message: %q, %v", small, err)
	}
	got := make([]byte, len(bulk))
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(client, got); done <- err }()
	if _, err := client.Write(bulk); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil || !bytes.Equal(got, bulk) {
		t.Fatalf("bulk echo differs (err %v)", err)
	}
	// The client's half-close travels to the app, the app's back.
	client.CloseWrite()
	if rest, err := io.ReadAll(client); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %d bytes, %v; want EOF", len(rest), err)
	}
	select {
	case c := <-counts:
		if c[0] != int64(len(want)) || c[1] != int64(len(want)) {
			t.Errorf("Join counted %d and %d bytes, want %d each way", c[0], c[1], len(want))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Join did not return after both half-closes")
	}
}
