package l4

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// blackHole accepts TCP connections and never answers: a dial to it
// hangs in the TLS handshake. Each connection its dialer closes is sent
// on closed.
type blackHole struct {
	net.Listener
	mu       sync.Mutex
	accepted int
	closed   chan struct{}
}

func newBlackHole(t testing.TB) *blackHole {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &blackHole{Listener: l, closed: make(chan struct{}, 16)}
	var wg sync.WaitGroup
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.accepted++
			conns = append(conns, c)
			h.mu.Unlock()
			wg.Go(func() {
				io.Copy(io.Discard, c) // the ClientHello, then EOF when the dialer gives up
				h.closed <- struct{}{}
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		h.mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		h.mu.Unlock()
		wg.Wait()
	})
	return h
}

func (h *blackHole) acceptedCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.accepted
}

// gatedListener accepts TCP connections and holds them, unread, until
// open is called; then Accept returns them, and later ones. Until then
// its endpoint is a black hole.
type gatedListener struct {
	net.Listener // the real socket; Accept below is the gated one

	mu       sync.Mutex
	accepted int
	gate     chan struct{}
	ch       chan net.Conn
	done     chan struct{}
}

func newGatedListener(t testing.TB) *gatedListener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedListener{Listener: l, gate: make(chan struct{}), ch: make(chan net.Conn), done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.accepted++
			g.mu.Unlock()
			wg.Go(func() {
				select {
				case <-g.gate:
				case <-g.done:
					c.Close()
					return
				}
				select {
				case g.ch <- c:
				case <-g.done:
					c.Close()
				}
			})
		}
	})
	t.Cleanup(func() {
		close(g.done)
		l.Close()
		wg.Wait()
	})
	return g
}

func (g *gatedListener) Accept() (net.Conn, error) {
	select {
	case c := <-g.ch:
		return c, nil
	case <-g.done:
		return nil, net.ErrClosed
	}
}

func (g *gatedListener) acceptedCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.accepted
}

func (g *gatedListener) openGate() { close(g.gate) }

// A black-holed endpoint (it takes the TCP connection and never answers
// the handshake) makes Get fail when the caller's context ends, not when
// the pool's much longer dial timeout does.
func TestPoolGetEndsWithCallerContext(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	hole := newBlackHole(t)
	pool := NewPool(time.Minute, 0, nil)
	t.Cleanup(pool.Close)
	cfg := ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), ALPN)

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	c, err := pool.Get(ctx, Endpoint{Addr: hole.Addr().String()}, "web", cfg)
	took := time.Since(start)
	if err == nil {
		c.Unreserve()
		t.Fatal("got a connection from a black hole")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want the caller's deadline", err)
	}
	if took > time.Second {
		t.Errorf("Get returned after %s, want about the caller's 200ms", took)
	}
	// The caller was the only one waiting: its dial is abandoned, and
	// the endpoint sees its connection closed.
	select {
	case <-hole.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the abandoned dial's connection was not closed")
	}
}

// Callers that need a new connection to the same endpoint share one dial,
// made outside the endpoint's lock: one that gives up does not wait for it
// and does not cancel it for the others, and another endpoint is not
// delayed by it.
func TestPoolDialSharedByWaiters(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	gate := newGatedListener(t)
	in := &Inbound{TLS: ca.Source(t, "web").ServerConfig(nil, ALPN), Authorize: allowAll, Target: echoApp(t)}
	go in.Serve(gate)
	pool := NewPool(time.Minute, 0, nil)
	t.Cleanup(pool.Close)
	cfg := ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), ALPN)
	addr := gate.Addr().String()

	type result struct {
		err error
	}
	first := make(chan result, 1)
	go func() {
		c, err := pool.Get(t.Context(), Endpoint{Addr: addr}, "web", cfg)
		if err == nil {
			c.Unreserve()
		}
		first <- result{err}
	}()
	trellistest.Eventually(t, 5*time.Second, "the first caller's dial to reach the endpoint", func() error {
		if gate.acceptedCount() != 1 {
			return errors.New("no connection yet")
		}
		return nil
	})

	// A second caller with a short deadline joins the dial and leaves.
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if c, err := pool.Get(ctx, Endpoint{Addr: addr}, "web", cfg); err == nil {
		c.Unreserve()
		t.Fatal("the second caller got a connection from a black hole")
	} else if took := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || took > time.Second {
		t.Fatalf("second caller: %v after %s, want its own deadline after about 200ms", err, took)
	}

	// Another endpoint is not held up by the pending dial.
	other := newChain(t, ca, "web", "client", "web", allowAll)
	otherAddr := other.out.Endpoints()[0].Addr
	start = time.Now()
	c, err := pool.Get(t.Context(), Endpoint{Addr: otherAddr}, "web", cfg)
	if err != nil {
		t.Fatalf("another endpoint: %v", err)
	}
	c.Unreserve()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("another endpoint answered after %s", took)
	}

	// The endpoint answers now: the first caller's dial, still the only
	// one, completes for it.
	gate.openGate()
	select {
	case r := <-first:
		if r.err != nil {
			t.Fatalf("first caller: %v, want the shared dial's connection", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first caller is still waiting")
	}
	if n := gate.acceptedCount(); n != 1 {
		t.Errorf("the endpoint saw %d connections, want 1 (one dial shared)", n)
	}
	if n := len(pooled(pool, addr, "web")); n != 1 {
		t.Errorf("pool holds %d connections to the endpoint, want 1", n)
	}
}

// Close cancels a dial in progress and waits for it: nothing of the pool
// is left running, and Get fails afterwards.
func TestPoolCloseEndsDials(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	hole := newBlackHole(t)
	pool := NewPool(time.Minute, 0, nil)
	cfg := ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), ALPN)
	got := make(chan error, 1)
	go func() {
		_, err := pool.Get(t.Context(), Endpoint{Addr: hole.Addr().String()}, "web", cfg)
		got <- err
	}()
	trellistest.Eventually(t, 5*time.Second, "the dial to reach the endpoint", func() error {
		if hole.acceptedCount() != 1 {
			return errors.New("no connection yet")
		}
		return nil
	})
	pool.Close()
	select {
	case <-hole.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close left the dial's connection open")
	}
	if err := <-got; err == nil {
		t.Fatal("Get succeeded against a black hole")
	}
	if _, err := pool.Get(t.Context(), Endpoint{Addr: hole.Addr().String()}, "web", cfg); !errors.Is(err, errPoolClosed) {
		t.Errorf("Get after Close: %v, want %v", err, errPoolClosed)
	}
}

// Drain that gives up ends the inbound's dials to the app too (here an
// address that drops packets) and waits for the streams: none is left
// when it returns.
func TestInboundDrainEndsAppDials(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	m := NewMetrics(prometheus.NewRegistry())
	in := &Inbound{TLS: ca.Source(t, "web").ServerConfig(nil, ALPN), Authorize: allowAll, Target: trellistest.BlackHole(t),
		DialTimeout: time.Minute, Metrics: m}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); in.Serve(l) }()
	pool := NewPool(0, 0, nil)
	t.Cleanup(pool.Close)
	opened := make(chan error, 1)
	go func() {
		s, err := pool.Open(t.Context(), Endpoint{Addr: l.Addr().String()}, "web", ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), ALPN))
		if err == nil {
			s.Close()
		}
		opened <- err
	}()
	trellistest.Eventually(t, 5*time.Second, "the stream dialing the app", func() error {
		if n := in.streams.n.Load(); n != 1 {
			return fmt.Errorf("%d streams", n)
		}
		return nil
	})
	l.Close()
	<-served
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := in.Drain(ctx); err == nil {
		t.Error("Drain says all ended, with a stream dialing")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Drain returned after %s, want about its 100ms", took)
	}
	if n := in.streams.n.Load(); n != 0 {
		t.Errorf("%d streams still open after Drain returned, want 0", n)
	}
	if err := <-opened; err == nil {
		t.Error("the stream was accepted, with the app unreachable")
	}
}

// Past the streams four connections carry (4,000), the pool dials more
// instead of refusing: a few clients holding stalled streams must not
// make every other request to the endpoint fail.
func TestPoolGrowsPastFourConnections(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	ch := newChain(t, ca, "web", "client", "web", allowAll)
	addr := ch.out.Endpoints()[0].Addr
	pool := NewPool(0, 0, nil)
	t.Cleanup(pool.Close)
	cfg := ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), ALPN)
	conns := map[*tunnel.Conn]int{}
	for i := range 5000 {
		c, err := pool.Get(t.Context(), Endpoint{Addr: addr}, "web", cfg)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		conns[c]++
	}
	if len(conns) < 5 {
		t.Fatalf("5000 streams on %d connections, want at least 5", len(conns))
	}
	for c, n := range conns {
		for range n {
			c.Unreserve()
		}
	}
}
