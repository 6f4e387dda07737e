// Package edge serves clients from outside the mesh: a listener that
// terminates TLS for them (or passes their bytes through untouched) and
// forwards plain traffic to the app, optionally speaking the PROXY protocol
// on either side so that the client's address survives the hops.
package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/netconn"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/trellis-mesh/trellis/internal/proxy/handshake"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
)

// Listener forwards each accepted connection to Target.
type Listener struct {
	// TLS terminates TLS with this configuration; nil forwards the bytes
	// as they come (the app terminates TLS itself).
	TLS *tls.Config
	// Target is the app's address, such as 127.0.0.1:8080.
	Target string
	// AcceptProxy requires a PROXY protocol header (v1 or v2) before
	// anything else, as a load balancer or `trellis gateway` sends; the
	// address it carries is the client's. Connections without one are
	// refused.
	AcceptProxy bool
	// SendProxy sends a PROXY protocol v2 header with the client's address
	// to the app before the client's bytes.
	SendProxy bool
	// HandshakeTimeout bounds the PROXY header and the TLS handshake;
	// default 10s.
	HandshakeTimeout time.Duration
	// HTTP, when set and returning true (the service speaks HTTP), hands
	// each connection whose TLS ended here to ServeHTTP instead of
	// splicing it to the app, so that its requests are checked and lose
	// the peer header (l7.Inbound.ServeEdge). Not with SendProxy (the app
	// then expects a PROXY header on each connection) nor without TLS
	// (the bytes are the app's to decrypt).
	HTTP      func() bool
	ServeHTTP func(c net.Conn)
	// Logger; nil discards.
	Logger *slog.Logger
	// Metrics; nil means unregistered ones.
	Metrics *l4.Metrics
	// HandshakeLog reports failed TLS handshakes; nil means one on Logger.
	HandshakeLog *handshake.Log
	// Acceptor runs Serve's accept loop (the listener's name, limits and
	// counters); nil means one with the default limit that logs on
	// Logger.
	Acceptor *netconn.Acceptor

	once sync.Once
	// ctx is every connection's: it ends when Drain gives up waiting, so
	// that a handshake or a dial to the app in progress ends with the
	// connection instead of running to its own timeout.
	ctx      context.Context
	cancel   context.CancelFunc
	mu       sync.Mutex
	open     map[net.Conn]struct{}
	draining bool
	wg       sync.WaitGroup // the connections' goroutines; Drain waits for them
}

func (e *Listener) init() {
	e.once.Do(func() {
		if e.Logger == nil {
			e.Logger = slog.New(slog.DiscardHandler)
		}
		if e.Metrics == nil {
			e.Metrics = l4.NewMetrics(nil)
		}
		if e.HandshakeLog == nil {
			e.HandshakeLog = &handshake.Log{Logger: e.Logger}
		}
		if e.HandshakeTimeout == 0 {
			e.HandshakeTimeout = 10 * time.Second
		}
		e.open = map[net.Conn]struct{}{}
		e.ctx, e.cancel = context.WithCancel(context.Background())
	})
}

// Serve accepts connections on l until it is closed.
func (e *Listener) Serve(l net.Listener) error {
	e.init()
	acc := e.Acceptor
	if acc == nil {
		acc = &netconn.Acceptor{Name: "edge", Logger: e.Logger}
	}
	return acc.Serve(l, func(c net.Conn) {
		if !e.track(c) {
			c.Close()
			return
		}
		defer e.untrack(c)
		e.serve(c)
	})
}

func (e *Listener) track(c net.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.draining {
		return false
	}
	e.open[c] = struct{}{}
	e.wg.Add(1)
	return true
}

func (e *Listener) untrack(c net.Conn) {
	e.mu.Lock()
	delete(e.open, c)
	e.mu.Unlock()
	e.wg.Done()
}

func (e *Listener) serve(raw net.Conn) {
	defer raw.Close()
	e.Metrics.Active.WithLabelValues("edge").Inc()
	defer e.Metrics.Active.WithLabelValues("edge").Dec()
	client, err := e.accept(raw)
	if err != nil {
		e.Metrics.Connections.WithLabelValues("edge", "", "error").Inc()
		if !errors.Is(err, errHandshake) { // logged, rate-limited, by accept
			e.Logger.Info("edge connection refused", "remote", raw.RemoteAddr().String(), "err", err)
		}
		return
	}
	defer client.Close()
	if e.TLS != nil && !e.SendProxy && e.ServeHTTP != nil && e.HTTP != nil && e.HTTP() {
		e.Metrics.Connections.WithLabelValues("edge", "", "ok").Inc()
		e.ServeHTTP(client)
		return
	}
	d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}
	app, err := d.DialContext(e.ctx, "tcp", e.Target)
	if err != nil {
		e.Metrics.Connections.WithLabelValues("edge", "", "error").Inc()
		e.Logger.Warn("edge: app unreachable", "target", e.Target, "err", err)
		return
	}
	defer app.Close()
	if e.SendProxy {
		h := proxyproto.HeaderProxyFromAddrs(2, client.RemoteAddr(), client.LocalAddr())
		if _, err := h.WriteTo(app); err != nil {
			e.Metrics.Connections.WithLabelValues("edge", "", "error").Inc()
			return
		}
	}
	e.Metrics.Connections.WithLabelValues("edge", "", "ok").Inc()
	if e.TLS != nil {
		// TLS to plain: no socket-to-socket copy, so the app's side may
		// write raw as well.
		app = netconn.Raw(app)
	}
	e.Metrics.Join("edge", "", client, app, 0, 0)
}

// accept reads the PROXY header and does the TLS handshake, as configured,
// within the handshake timeout. The connection it returns reports the
// client's address as its RemoteAddr.
func (e *Listener) accept(c net.Conn) (net.Conn, error) {
	deadline := time.Now().Add(e.HandshakeTimeout)
	if e.AcceptProxy {
		pc := proxyproto.NewConn(c, proxyproto.WithPolicy(proxyproto.REQUIRE), proxyproto.SetReadHeaderTimeout(e.HandshakeTimeout))
		if pc.ProxyHeader() == nil {
			// ProxyHeader reads the header; a missing or bad one shows as
			// an error on the first read, which the handshake or copy
			// below would report less clearly.
			if _, err := pc.Read(nil); err != nil {
				return nil, fmt.Errorf("PROXY protocol header: %w", err)
			}
		}
		c = &proxied{pc}
	}
	if e.TLS == nil {
		return c, nil // passed through: copied socket to socket
	}
	tc := tls.Server(netconn.Raw(c), e.TLS)
	ctx, cancel := context.WithDeadline(e.ctx, deadline)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		e.Metrics.Handshakes.WithLabelValues("edge", "error").Inc()
		e.HandshakeLog.Failed(c, tc, err)
		return nil, fmt.Errorf("%w: %w", errHandshake, err)
	}
	e.Metrics.Handshakes.WithLabelValues("edge", "ok").Inc()
	return tc, nil
}

// errHandshake marks a failed TLS handshake, which accept has logged.
var errHandshake = errors.New("TLS handshake")

// proxied is a PROXY protocol connection that can still half-close.
type proxied struct{ *proxyproto.Conn }

func (p *proxied) CloseWrite() error {
	if tc, ok := p.TCPConn(); ok {
		return tc.CloseWrite()
	}
	return p.Close()
}

// Drain stops accepting new connections and waits for open ones until ctx
// ends; then it closes them, ends their handshakes and dials, and waits
// for their goroutines, which end at once: none is left when it returns.
func (e *Listener) Drain(ctx context.Context) error {
	e.init()
	e.mu.Lock()
	e.draining = true
	e.mu.Unlock()
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	e.cancel()
	e.mu.Lock()
	n := len(e.open)
	for c := range e.open {
		c.Close()
	}
	e.mu.Unlock()
	<-done
	return fmt.Errorf("edge drain: closed %d connections still open: %w", n, ctx.Err())
}
