package l4

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// Two roots of one trust domain: a bundle with both, then one without the
// first, is a root removal.
func twoRoots(t *testing.T) (a, b *trellistest.CA, both *certs.Bundle) {
	a = trellistest.NewCA(t, "trellis.local")
	b = trellistest.NewCA(t, "trellis.local")
	both, err := certs.NewBundle("trellis.local", append(append([]byte{}, a.RootsPEM()...), b.RootsPEM()...))
	if err != nil {
		t.Fatal(err)
	}
	return a, b, both
}

// workload is a source with a certificate and a bundle.
func workload(t *testing.T, ca *trellistest.CA, service string, ttl time.Duration, b *certs.Bundle) *certs.Source {
	s := &certs.Source{}
	s.SetCertificate(ca.SVID(t, service, ttl))
	s.SetBundle(b)
	return s
}

// serveInbound starts an inbound to an echo app with src's identity and
// guard g (nil: none) and returns its address.
func serveInbound(t *testing.T, src *certs.Source, g *Guard) string {
	in := &Inbound{TLS: src.ServerConfig(nil, ALPN), Authorize: allowAll, Target: echoApp(t), Guard: g, HalfCloseTimeout: time.Second}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go in.Serve(l)
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// serveOutbound starts an outbound to service at addr through pool and
// returns its local address.
func serveOutbound(t *testing.T, service, addr string, src *certs.Source, pool *Pool) string {
	out := &Outbound{
		Service:   service,
		Endpoints: func() []Endpoint { return []Endpoint{{Addr: addr, Instance: service + "-1"}} },
		TLS:       src.ClientConfig(certs.ExpectService(service), ALPN),
		Pool:      pool,
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go out.Serve(l)
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// pooled returns the pool's connections to service at addr.
func pooled(p *Pool, addr, service string) []*tunnel.Conn {
	p.mu.Lock()
	e := p.entries[poolKey{endpoint: addr, service: service}]
	p.mu.Unlock()
	if e == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*tunnel.Conn(nil), e.conns...)
}

// longStream is a client connection through an outbound that stays open:
// each echo proves the stream under it still carries bytes.
type longStream struct{ c net.Conn }

func openLong(t *testing.T, addr string) *longStream {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ls := &longStream{c}
	if err := ls.echo("hello"); err != nil {
		t.Fatalf("open long stream: %v", err)
	}
	return ls
}

func (ls *longStream) echo(s string) error {
	ls.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(ls.c, s); err != nil {
		return err
	}
	buf := make([]byte, len(s))
	if _, err := io.ReadFull(ls.c, buf); err != nil {
		return err
	}
	if string(buf) != s {
		return fmt.Errorf("echo %q, want %q", buf, s)
	}
	return nil
}

func isDone(c *tunnel.Conn) error {
	select {
	case <-c.Done():
		return nil
	default:
		return errors.New("still open")
	}
}

// After a root is dropped from the bundle, the outbound connection whose
// peer only that root verified takes no new stream, finishes the stream in
// flight and closes; the connection to a peer the remaining root verifies
// is untouched and keeps serving new streams.
func TestGuardRetiresOutboundConnectionsTheNewBundleDoesNotVerify(t *testing.T) {
	caA, caB, both := twoRoots(t)
	webAddr := serveInbound(t, workload(t, caA, "web", 0, both), nil)
	apiAddr := serveInbound(t, workload(t, caB, "api", 0, both), nil)
	client := workload(t, caB, "client", 0, both)
	m := NewMetrics(prometheus.NewRegistry())
	g := &Guard{Bundle: client.Bundle, Own: client.Certificate, Drain: time.Second, Metrics: m}
	pool := NewPool(0, 0, m)
	pool.Guard = g
	t.Cleanup(pool.Close)
	toWeb := serveOutbound(t, "web", webAddr, client, pool)
	toAPI := serveOutbound(t, "api", apiAddr, client, pool)

	longWeb, longAPI := openLong(t, toWeb), openLong(t, toAPI)
	webConn, apiConn := pooled(pool, webAddr, "web"), pooled(pool, apiAddr, "api")
	if len(webConn) != 1 || len(apiConn) != 1 {
		t.Fatalf("pooled connections: web %d, api %d, want 1 each", len(webConn), len(apiConn))
	}
	handshakes := testutil.ToFloat64(m.Handshakes.WithLabelValues("client", "ok"))

	onlyB := caB.Bundle(t)
	client.SetBundle(onlyB)
	if n := g.Recheck(onlyB); n != 1 {
		t.Fatalf("Recheck retired %d connections, want 1 (web's)", n)
	}
	if webConn[0].Usable() {
		t.Error("the connection to web (root A only) still takes new streams")
	}
	if err := longWeb.echo("in flight"); err != nil {
		t.Errorf("the stream in flight on the retired connection failed before its drain: %v", err)
	}
	// The untouched connection serves new streams, with no new handshake.
	if got, err := roundTrip(toAPI, []byte("new")); err != nil || string(got) != "new" {
		t.Errorf("new stream to api = %q, %v", got, err)
	}
	if err := longAPI.echo("still"); err != nil {
		t.Errorf("stream to api: %v", err)
	}
	if now := pooled(pool, apiAddr, "api"); len(now) != 1 || now[0] != apiConn[0] || !apiConn[0].Usable() {
		t.Error("the connection to api was replaced or retired; want it untouched")
	}
	if got := testutil.ToFloat64(m.Handshakes.WithLabelValues("client", "ok")); got != handshakes {
		t.Errorf("%v client handshakes after the bundle change, want %v (none new)", got, handshakes)
	}
	// web's certificate no longer verifies: a new stream cannot reach it.
	if got, _ := roundTrip(toWeb, []byte("new")); len(got) != 0 {
		t.Errorf("new stream to web answered %q through an untrusted peer", got)
	}
	trellistest.Eventually(t, 5*time.Second, "retired connection closed after its drain", func() error { return isDone(webConn[0]) })
	if got := testutil.ToFloat64(m.Retired.WithLabelValues("outbound", "web", RetiredTrust)); got != 1 {
		t.Errorf("retired{outbound,web,trust} = %v, want 1", got)
	}
	if err := isDone(apiConn[0]); err == nil {
		t.Error("the connection to api closed")
	}
}

// After a root is dropped, the inbound side sends GOAWAY on the connection
// of the caller only that root verified and closes it after its drain; the
// other caller's connection is untouched.
func TestGuardRetiresInboundConnectionsTheNewBundleDoesNotVerify(t *testing.T) {
	caA, caB, both := twoRoots(t)
	server := workload(t, caB, "web", 0, both)
	m := NewMetrics(prometheus.NewRegistry())
	g := &Guard{Bundle: server.Bundle, Own: server.Certificate, Drain: time.Second, Metrics: m}
	addr := serveInbound(t, server, g)

	poolA, poolB := NewPool(0, 0, nil), NewPool(0, 0, nil)
	t.Cleanup(poolA.Close)
	t.Cleanup(poolB.Close)
	fromA := serveOutbound(t, "web", addr, workload(t, caA, "alpha", 0, both), poolA)
	fromB := serveOutbound(t, "web", addr, workload(t, caB, "beta", 0, both), poolB)
	longA, longB := openLong(t, fromA), openLong(t, fromB)
	connA, connB := pooled(poolA, addr, "web"), pooled(poolB, addr, "web")
	if g.Open() != 2 {
		t.Fatalf("guard watches %d connections, want 2", g.Open())
	}

	onlyB := caB.Bundle(t)
	server.SetBundle(onlyB)
	if n := g.Recheck(onlyB); n != 1 {
		t.Fatalf("Recheck retired %d connections, want 1 (alpha's)", n)
	}
	trellistest.Eventually(t, 5*time.Second, "alpha's connection hears the GOAWAY", func() error {
		if connA[0].Usable() {
			return errors.New("still usable")
		}
		return nil
	})
	if err := longA.echo("in flight"); err != nil {
		t.Errorf("alpha's stream in flight failed before its drain: %v", err)
	}
	if got, err := roundTrip(fromB, []byte("new")); err != nil || string(got) != "new" {
		t.Errorf("new stream from beta = %q, %v", got, err)
	}
	if err := longB.echo("still"); err != nil {
		t.Errorf("beta's stream: %v", err)
	}
	if !connB[0].Usable() {
		t.Error("beta's connection was retired; want it untouched")
	}
	trellistest.Eventually(t, 5*time.Second, "alpha's connection closed after the drain", func() error { return isDone(connA[0]) })
	if got := testutil.ToFloat64(m.Retired.WithLabelValues("inbound", "alpha", RetiredTrust)); got != 1 {
		t.Errorf("retired{inbound,alpha,trust} = %v, want 1", got)
	}
	// alpha's certificate no longer verifies: it cannot come back.
	if got, _ := roundTrip(fromA, []byte("new")); len(got) != 0 {
		t.Errorf("alpha reached the app again: %q", got)
	}
	if err := isDone(connB[0]); err == nil {
		t.Error("beta's connection closed")
	}
}

// steady sends a request through addr every few milliseconds until stop
// and counts failures.
func steady(t *testing.T, addr string, stop <-chan struct{}) (wait func() (ok, failed int64)) {
	var okN, failN atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				msg := []byte(fmt.Sprintf("w%d-%d", w, i))
				got, err := roundTrip(addr, msg)
				if err != nil || !bytes.Equal(got, msg) {
					failN.Add(1)
					t.Logf("request %s failed: got %q, %v", msg, got, err)
					continue
				}
				okN.Add(1)
			}
		}()
	}
	return func() (int64, int64) { wg.Wait(); return okN.Load(), failN.Load() }
}

// watchClose records when c ends.
func watchClose(c *tunnel.Conn) func() time.Time {
	var at atomic.Pointer[time.Time]
	go func() {
		<-c.Done()
		now := time.Now()
		at.Store(&now)
	}()
	return func() time.Time {
		if p := at.Load(); p != nil {
			return *p
		}
		return time.Time{}
	}
}

// A pooled connection to a peer whose leaf expires soon is retired before
// the expiry and replaced (the peer renewed at half-life), and a steady
// stream of requests sees no failure.
func TestGuardRetiresOutboundConnectionBeforeThePeerLeafExpires(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	b := ca.Bundle(t)
	server := workload(t, ca, "web", 6*time.Second, b)
	expires := server.Certificate().Leaf.NotAfter
	addr := serveInbound(t, server, nil)
	client := workload(t, ca, "client", 0, b)
	m := NewMetrics(prometheus.NewRegistry())
	g := &Guard{Bundle: client.Bundle, Own: client.Certificate, Metrics: m}
	pool := NewPool(0, 0, m)
	pool.Guard = g
	t.Cleanup(pool.Close)
	out := serveOutbound(t, "web", addr, client, pool)

	if got, err := roundTrip(out, []byte("first")); err != nil || string(got) != "first" {
		t.Fatalf("first request = %q, %v", got, err)
	}
	first := pooled(pool, addr, "web")[0]
	closedAt := watchClose(first)
	// The peer renews at half-life, as a proxy does.
	renew := time.AfterFunc(time.Until(expires)/2, func() { server.SetCertificate(ca.SVID(t, "web", time.Hour)) })
	defer renew.Stop()

	stop := make(chan struct{})
	wait := steady(t, out, stop)
	time.Sleep(time.Until(expires) + 300*time.Millisecond)
	close(stop)
	ok, failed := wait()
	if failed != 0 || ok == 0 {
		t.Errorf("%d requests failed, %d succeeded across the retirement; want none failed", failed, ok)
	}
	at := closedAt()
	if at.IsZero() || !at.Before(expires) {
		t.Errorf("the first connection closed at %v, want before its peer's leaf expired at %v", at, expires)
	}
	if got := testutil.ToFloat64(m.Retired.WithLabelValues("outbound", "web", RetiredExpiry)); got < 1 {
		t.Errorf("retired{outbound,web,expiry} = %v, want at least 1", got)
	}
}

// The inbound side retires a connection before the caller's leaf expires
// (GOAWAY): the caller's pool, which does not guard itself here, dials a
// fresh connection with its renewed leaf and no request fails.
func TestGuardRetiresInboundConnectionBeforeThePeerLeafExpires(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	b := ca.Bundle(t)
	server := workload(t, ca, "web", 0, b)
	m := NewMetrics(prometheus.NewRegistry())
	g := &Guard{Bundle: server.Bundle, Own: server.Certificate, Metrics: m}
	addr := serveInbound(t, server, g)
	client := workload(t, ca, "client", 6*time.Second, b)
	expires := client.Certificate().Leaf.NotAfter
	pool := NewPool(0, 0, nil)
	t.Cleanup(pool.Close)
	out := serveOutbound(t, "web", addr, client, pool)

	if got, err := roundTrip(out, []byte("first")); err != nil || string(got) != "first" {
		t.Fatalf("first request = %q, %v", got, err)
	}
	first := pooled(pool, addr, "web")[0]
	closedAt := watchClose(first)
	renew := time.AfterFunc(time.Until(expires)/2, func() { client.SetCertificate(ca.SVID(t, "client", time.Hour)) })
	defer renew.Stop()

	stop := make(chan struct{})
	wait := steady(t, out, stop)
	time.Sleep(time.Until(expires) + 300*time.Millisecond)
	close(stop)
	ok, failed := wait()
	if failed != 0 || ok == 0 {
		t.Errorf("%d requests failed, %d succeeded across the retirement; want none failed", failed, ok)
	}
	at := closedAt()
	if at.IsZero() || !at.Before(expires) {
		t.Errorf("the first connection closed at %v, want before the caller's leaf expired at %v", at, expires)
	}
	if got := testutil.ToFloat64(m.Retired.WithLabelValues("inbound", "client", RetiredExpiry)); got < 1 {
		t.Errorf("retired{inbound,client,expiry} = %v, want at least 1", got)
	}
}

// A connection is retired before this proxy's own leaf of the handshake
// expires, even when the peer's lives on.
func TestGuardRetiresBeforeTheOwnLeafExpires(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	b := ca.Bundle(t)
	addr := serveInbound(t, workload(t, ca, "web", 0, b), nil)
	client := workload(t, ca, "client", 6*time.Second, b)
	expires := client.Certificate().Leaf.NotAfter
	m := NewMetrics(prometheus.NewRegistry())
	g := &Guard{Bundle: client.Bundle, Own: client.Certificate, Metrics: m}
	pool := NewPool(0, 0, m)
	pool.Guard = g
	t.Cleanup(pool.Close)
	out := serveOutbound(t, "web", addr, client, pool)
	if got, err := roundTrip(out, []byte("x")); err != nil || string(got) != "x" {
		t.Fatalf("request = %q, %v", got, err)
	}
	first := pooled(pool, addr, "web")[0]
	client.SetCertificate(ca.SVID(t, "client", time.Hour)) // renewed; the connection still rests on the old leaf
	trellistest.Eventually(t, time.Until(expires)+time.Second, "connection made with the old leaf closed", func() error { return isDone(first) })
	if !time.Now().Before(expires) {
		t.Errorf("closed at %v, want before the own leaf's expiry %v", time.Now(), expires)
	}
}

func TestRetirementTimes(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name                string
		life                time.Duration
		direction           string
		wantGoaway, wantEnd time.Duration // before the expiry
	}{
		{"day inbound", 24 * time.Hour, "inbound", 35 * time.Second, 5 * time.Second},
		{"day outbound", 24 * time.Hour, "outbound", 40 * time.Second, 5 * time.Second},
		{"12s inbound", 12 * time.Second, "inbound", 4400 * time.Millisecond, 2 * time.Second},
		{"12s outbound", 12 * time.Second, "outbound", 5 * time.Second, 2 * time.Second},
		{"expired", -time.Second, "inbound", -time.Second, -time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exp := now.Add(tc.life)
			g, c := retirement(now, exp, tc.direction)
			if got := exp.Sub(g); got != tc.wantGoaway {
				t.Errorf("retirement starts %v before the expiry, want %v", got, tc.wantGoaway)
			}
			if got := exp.Sub(c); got != tc.wantEnd {
				t.Errorf("close %v before the expiry, want %v", got, tc.wantEnd)
			}
		})
	}
}

func TestExpiryIsTheEarliestOfChainAndOwnLeaf(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cert := func(h int) *x509.Certificate {
		return &x509.Certificate{NotAfter: base.Add(time.Duration(h) * time.Hour)}
	}
	for _, tc := range []struct {
		name  string
		chain []*x509.Certificate
		own   time.Time
		want  time.Time
	}{
		{"leaf first", []*x509.Certificate{cert(2), cert(10)}, base.Add(5 * time.Hour), base.Add(2 * time.Hour)},
		{"own leaf first", []*x509.Certificate{cert(8), cert(10)}, base.Add(5 * time.Hour), base.Add(5 * time.Hour)},
		{"intermediate first", []*x509.Certificate{cert(8), cert(3)}, base.Add(5 * time.Hour), base.Add(3 * time.Hour)},
		{"own unknown", []*x509.Certificate{cert(8)}, time.Time{}, base.Add(8 * time.Hour)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := expiry(tc.chain, tc.own); !got.Equal(tc.want) {
				t.Errorf("expiry = %v, want %v", got, tc.want)
			}
		})
	}
}

// A bundle that changes while a connection shakes hands (so that the
// Recheck it comes with may have missed the connection) is applied to the
// connection before its first stream: a peer only the dropped root
// verified gets no stream.
func TestGuardChecksABundleThatChangedDuringTheHandshake(t *testing.T) {
	caA, caB, both := twoRoots(t)
	webAddr := serveInbound(t, workload(t, caA, "web", 0, both), nil)
	client := workload(t, caB, "client", 0, both)
	onlyB := caB.Bundle(t)
	var calls atomic.Int32
	m := NewMetrics(prometheus.NewRegistry())
	g := &Guard{
		// Before sees the old bundle; every later look the new one.
		Bundle: func() *certs.Bundle {
			if calls.Add(1) == 1 {
				return both
			}
			return onlyB
		},
		Own: client.Certificate, Metrics: m,
	}
	pool := NewPool(0, 0, m)
	pool.Guard = g
	t.Cleanup(pool.Close)
	if c, err := pool.Get(t.Context(), Endpoint{Addr: webAddr}, "web", client.ClientConfig(certs.ExpectService("web"), ALPN)); err == nil {
		c.Unreserve()
		t.Fatal("a connection to a peer the new bundle does not verify was handed out")
	}
	if got := testutil.ToFloat64(m.Retired.WithLabelValues("outbound", "web", RetiredTrust)); got != 1 {
		t.Errorf("retired{outbound,web,trust} = %v, want 1", got)
	}
	if g.Open() != 0 {
		trellistest.Eventually(t, 5*time.Second, "the refused connection forgotten", func() error {
			if n := g.Open(); n != 0 {
				return fmt.Errorf("%d tracked", n)
			}
			return nil
		})
	}
}
