package l4

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
)

// maxConnsPerEndpoint bounds the mTLS connections to one endpoint. Streams
// multiplex on them; another is dialed only when every one is at its
// stream limit (1000), so the pool grows with the streams in flight, up to
// 64,000 to one endpoint, instead of refusing requests past 4,000 as it
// did (a few clients holding stalled streams filled it, and every other
// request failed). Connections left without streams close after the
// tunnel's idle timeout.
const maxConnsPerEndpoint = 64

// Pool keeps multiplexed mTLS connections to endpoints, keyed by the
// endpoint address and the TLS configuration that checks its identity.
// It is safe for concurrent use; its zero value is not: use NewPool.
type Pool struct {
	// Logger receives a line for each upstream whose certificate is
	// refused; nil logs nothing. Set it before the pool's first use.
	Logger *slog.Logger
	// Guard, when set (before first use), watches every connection the
	// pool dials and retires those whose trust ends: the pool then dials
	// a fresh one.
	Guard *Guard
	// Tunnel holds the stream limits of the connections dialed
	// (StreamIdleTimeout, StreamWindow); zero fields take the tunnel's
	// defaults. Set before first use.
	Tunnel tunnel.Config

	cfg     tunnel.Config
	timeout time.Duration
	metrics *Metrics

	// ctx ends with Close, which cancels the dials in progress and waits
	// for the pool's goroutines (bg): dials, and the splices of upgrade
	// streams (DialUpgrade), which end with their connections.
	ctx  context.Context
	stop context.CancelFunc
	bg   sync.WaitGroup

	// Lock order: mu, then an entry's mu, then dialMu.
	mu          sync.Mutex // guards entries and closed
	entries     map[poolKey]*poolEntry
	closed      bool
	dialMu      sync.Mutex // guards dialsClosed, so that no dial starts once Close waits
	dialsClosed bool
	fresh       sync.Map // *tls.Config -> its copy without session resumption
}

type poolKey struct {
	addr    string
	service string
}

type poolEntry struct {
	mu      sync.Mutex
	conns   []*tunnel.Conn
	dialing *pendingDial // the dial in progress, shared by its waiters; nil if none
	gone    bool         // Forget or Close removed the entry: a dial that ends keeps nothing
}

// pendingDial is one dial to an endpoint that every caller needing a new
// connection to it waits for, so that a burst makes one connection. It
// runs in its own goroutine (owned by the pool: Close waits for it), not
// in a caller's: a caller whose context ends stops waiting without ending
// the dial for the others.
type pendingDial struct {
	done   chan struct{} // closed when err is set; a new connection is in the entry's conns
	err    error
	conn   *tunnel.Conn // the connection dialed, if err is nil
	cancel context.CancelFunc
	// waiters counts the callers waiting on done, under the entry's mu.
	// When the last one gives up the dial is cancelled: it is bounded by
	// the longest waiter, and by the pool's dial timeout.
	waiters int
}

// NewPool returns an empty pool. dialTimeout bounds TCP connect plus TLS
// handshake; zero means 5s. halfClose bounds how long a connection whose
// one side has finished waits for the other; zero means
// DefaultHalfCloseTimeout.
func NewPool(dialTimeout, halfClose time.Duration, m *Metrics) *Pool {
	if dialTimeout == 0 {
		dialTimeout = 5 * time.Second
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Pool{
		cfg:     tunnel.Config{HalfCloseTimeout: halfClose},
		timeout: dialTimeout,
		metrics: m,
		ctx:     ctx,
		stop:    stop,
		entries: map[poolKey]*poolEntry{},
	}
}

// maxDialRounds bounds how many dials one Get waits for: a dial whose
// connection is taken (or refuses streams) before this caller can reserve
// a stream on it sends the caller round again, but not for ever.
const maxDialRounds = 3

// Get returns a connection to addr that has room for one more stream, with
// that stream reserved, dialing a new one when needed. cfg must check that
// the peer is service. Get returns when ctx ends, even if a dial is in
// progress: the caller's route or per-try timeout covers the dial. The
// dial itself is shared by every caller that needs a new connection to
// addr, and goes on while one of them still waits.
func (p *Pool) Get(ctx context.Context, addr, service string, cfg *tls.Config) (*tunnel.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, context.Cause(ctx))
	}
	key := poolKey{addr: addr, service: service}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, fmt.Errorf("endpoint %s: %w", addr, errPoolClosed)
	}
	e := p.entries[key]
	if e == nil {
		e = &poolEntry{}
		p.entries[key] = e
	}
	p.mu.Unlock()

	for round := 0; ; round++ {
		e.mu.Lock()
		if c := e.reserveLocked(); c != nil {
			e.mu.Unlock()
			return c, nil
		}
		d := e.dialing
		if d == nil {
			if len(e.conns) >= maxConnsPerEndpoint {
				n := len(e.conns)
				e.mu.Unlock()
				return nil, fmt.Errorf("endpoint %s: %d connections, all at their stream limit", addr, n)
			}
			if round >= maxDialRounds {
				e.mu.Unlock()
				return nil, fmt.Errorf("endpoint %s: new connections refuse streams", addr)
			}
			if e.gone {
				e.mu.Unlock()
				return nil, fmt.Errorf("endpoint %s: removed from the pool", addr)
			}
			var err error
			if d, err = p.startDial(e, addr, cfg); err != nil {
				e.mu.Unlock()
				return nil, err
			}
		}
		d.waiters++
		e.mu.Unlock()

		select {
		case <-d.done:
		case <-ctx.Done():
			e.mu.Lock()
			d.waiters--
			if d.waiters == 0 {
				// Nobody wants it any more (a no-op once done); the
				// next caller starts afresh rather than join a dial
				// that is ending.
				d.cancel()
				if e.dialing == d {
					e.dialing = nil
				}
			}
			e.mu.Unlock()
			return nil, fmt.Errorf("connect to %s: %w", addr, context.Cause(ctx))
		}
		e.mu.Lock()
		d.waiters--
		e.mu.Unlock()
		if d.err != nil {
			return nil, d.err
		}
		if err := d.conn.Err(); err != nil {
			// The connection failed as soon as it was made (the peer
			// refused our certificate after TLS 1.3's handshake had
			// ended on our side): that is this dial's answer, not a
			// reason to dial again.
			return nil, fmt.Errorf("endpoint %s: connection failed as it opened: %w", addr, err)
		}
	}
}

// reserveLocked drops the entry's unusable connections and returns one
// with a stream reserved, or nil.
func (e *poolEntry) reserveLocked() *tunnel.Conn {
	live := e.conns[:0]
	var pick *tunnel.Conn
	for _, c := range e.conns {
		if !c.Usable() {
			continue
		}
		live = append(live, c)
		if pick == nil && c.Reserve() {
			pick = c
		}
	}
	clear(e.conns[len(live):])
	e.conns = live
	return pick
}

// startDial starts the entry's shared dial, with e.mu held. The dial's
// context is the pool's (Close ends it) bounded by the dial timeout, and
// cancelled by the last waiter to give up.
func (p *Pool) startDial(e *poolEntry, addr string, cfg *tls.Config) (*pendingDial, error) {
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	if p.dialsClosed {
		return nil, fmt.Errorf("endpoint %s: %w", addr, errPoolClosed)
	}
	ctx, cancel := context.WithTimeout(p.ctx, p.timeout)
	d := &pendingDial{done: make(chan struct{}), cancel: cancel}
	e.dialing = d
	// Added under dialMu, with dialsClosed false: Close, which sets it
	// under dialMu before it waits, sees every dial it must wait for.
	p.bg.Go(func() {
		defer cancel()
		c, err := p.dial(ctx, addr, cfg)
		e.mu.Lock()
		if err == nil && e.gone {
			c.Close()
			c, err = nil, fmt.Errorf("endpoint %s: removed from the pool while dialing", addr)
		}
		if err == nil {
			e.conns = append(e.conns, c)
		}
		d.err, d.conn = err, c
		if e.dialing == d {
			e.dialing = nil
		}
		close(d.done)
		e.mu.Unlock()
	})
	return d, nil
}

var errPoolClosed = errors.New("connection pool closed")

// DialError is a failure to get a connection to an endpoint at all (TCP,
// TLS, or no room for a stream).
type DialError struct{ Err error }

func (e *DialError) Error() string { return e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

// maxRefusedOpens bounds how often Open tries again when the peer refused
// the stream unseen (it was going away: its connection is being retired).
const maxRefusedOpens = 3

// Open opens a CONNECT stream to service at addr, with header added, on a
// pooled connection. A stream the peer refused before it took anything
// (its connection going away) is opened again on another connection, so
// that retiring a connection fails no caller. A *DialError means no
// connection could be had; a *tunnel.StatusError that the peer refused
// the stream; any other error that it took nothing from it.
func (p *Pool) Open(ctx context.Context, addr, service string, cfg *tls.Config, header ...hpack.HeaderField) (*tunnel.Stream, error) {
	for try := 1; ; try++ {
		c, err := p.Get(ctx, addr, service, cfg)
		if err != nil {
			return nil, &DialError{Err: err}
		}
		s, err := c.Open(ctx, service, header...)
		if err == nil || !tunnel.Refused(err) || try == maxRefusedOpens || ctx.Err() != nil {
			return s, err
		}
	}
}

// dial connects to addr within ctx: TCP, TLS and the tunnel's start.
func (p *Pool) dial(ctx context.Context, addr string, cfg *tls.Config) (*tunnel.Conn, error) {
	d := net.Dialer{KeepAlive: 30 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		p.metrics.Handshakes.WithLabelValues("client", "error").Inc()
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	cork := tunnel.NewCork(netconn.Raw(nc))
	before := p.Guard.Before()
	if p.Guard != nil {
		cfg = p.fullHandshakes(cfg)
	}
	tc := tls.Client(cork, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		p.metrics.Handshakes.WithLabelValues("client", "error").Inc()
		if reason := certs.RejectReason(err); reason != "other" {
			p.metrics.Rejections.WithLabelValues("client", reason).Inc()
			if p.Logger != nil {
				p.Logger.Warn("upstream peer certificate rejected", "endpoint", addr, "reason", reason, "err", err)
			}
		}
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != ALPN {
		tc.Close()
		return nil, fmt.Errorf("dial %s: peer does not speak %s", addr, ALPN)
	}
	result := "ok"
	if cs.DidResume {
		result = "resumed"
	}
	p.metrics.Handshakes.WithLabelValues("client", result).Inc()
	tcfg := p.cfg
	tcfg.StreamIdleTimeout, tcfg.StreamWindow = p.Tunnel.StreamIdleTimeout, p.Tunnel.StreamWindow
	tcfg.Cork = cork
	tcfg.Logger = p.Logger // set after NewPool: the tunnel's own lines (floods) go there too
	c, err := tunnel.NewClient(tc, tcfg)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("tunnel to %s: %w", addr, err)
	}
	if !p.Guard.Track(c, "outbound", cs, before) {
		return nil, fmt.Errorf("dial %s: peer's certificate no longer trusted or about to expire", addr)
	}
	return c, nil
}

// fullHandshakes returns cfg without session resumption. A guarded pool
// does not resume TLS sessions: a resumed session brings back the peer's
// chain from its first handshake, whose leaf may be near its end or have
// been replaced, and hides which leaf of ours it was made with; the Guard
// must see the chain and the leaves each connection really rests on.
// Connections are long-lived and multiplexed, so handshakes are rare.
func (p *Pool) fullHandshakes(cfg *tls.Config) *tls.Config {
	if cfg.ClientSessionCache == nil {
		return cfg
	}
	if c, ok := p.fresh.Load(cfg); ok {
		return c.(*tls.Config)
	}
	c := cfg.Clone()
	c.ClientSessionCache = nil
	actual, _ := p.fresh.LoadOrStore(cfg, c)
	return actual.(*tls.Config)
}

// Forget closes idle connections to endpoints not in keep, so that removed
// endpoints do not hold sockets. Connections with open streams close when
// their streams end; a dial in progress to a removed endpoint keeps
// nothing.
func (p *Pool) Forget(keep map[string]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.entries {
		if keep[k.addr] {
			continue
		}
		delete(p.entries, k)
		// No dial holds e.mu (dials run outside it), so this is quick.
		e.mu.Lock()
		e.gone = true
		for _, c := range e.conns {
			c.Shutdown()
		}
		e.conns = nil
		e.mu.Unlock()
	}
}

// Close closes every pooled connection, cancels the dials in progress and
// waits for them to end. Get fails after Close.
func (p *Pool) Close() {
	p.dialMu.Lock()
	p.dialsClosed = true
	p.dialMu.Unlock()
	p.stop()
	p.mu.Lock()
	p.closed = true
	for k, e := range p.entries {
		delete(p.entries, k)
		e.mu.Lock()
		e.gone = true
		for _, c := range e.conns {
			c.Close()
		}
		e.conns = nil
		e.mu.Unlock()
	}
	p.mu.Unlock()
	p.bg.Wait()
}

var errNoEndpoints = errors.New("no healthy endpoints")
