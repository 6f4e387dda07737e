package l4

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
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
// endpoint (Endpoint.Key) and the service whose identity is checked.
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
	endpoint string // Endpoint.Key: addresses of other networks may repeat
	service  string
}

type poolEntry struct {
	mu      sync.Mutex
	conns   []*tunnel.Conn
	dialing *pendingDial // the dial in progress, shared by its waiters; nil if none
	gone    bool         // Forget or Close removed the entry: a dial that ends keeps nothing

	// path is how the endpoint is reached now (the last Get's or
	// Forget's); hops holds the hop each connection was dialed through
	// ("" direct), so that a connection on a path the endpoint no longer
	// has is retired; lastHop is the gateway the last dial got through,
	// tried first by the next one.
	path    path
	hops    map[*tunnel.Conn]string
	lastHop string
}

// path is how an endpoint is dialed: directly (no via) or through one of
// via with TLS server name sni.
type path struct {
	via []string
	sni string
}

func pathOf(ep Endpoint) path { return path{via: ep.Via, sni: ep.SNI} }

func (a path) equal(b path) bool {
	if a.sni != b.sni || len(a.via) != len(b.via) {
		return false
	}
	for i := range a.via {
		if a.via[i] != b.via[i] {
			return false
		}
	}
	return true
}

// allows reports whether a connection dialed through hop (or directly,
// "") is on the path.
func (a path) allows(hop string) bool {
	if len(a.via) == 0 {
		return hop == ""
	}
	for _, v := range a.via {
		if v == hop {
			return true
		}
	}
	return false
}

// setPathLocked makes p the entry's path and retires, gracefully, the
// connections not on it (a gateway left): they take no new streams and
// close when their open ones end, as connections to removed endpoints
// do. Only the gateways change: the SNI is the entry's key (Endpoint.Key),
// so an endpoint that turns direct, or starts going through gateways, is
// another entry, and Forget retires the old one. Called with e.mu.
func (e *poolEntry) setPathLocked(p path) {
	if e.path.equal(p) {
		return
	}
	e.path = path{via: append([]string(nil), p.via...), sni: p.sni}
	live := e.conns[:0]
	for _, c := range e.conns {
		if !p.allows(e.hops[c]) {
			delete(e.hops, c)
			c.Shutdown()
			continue
		}
		live = append(live, c)
	}
	clear(e.conns[len(live):])
	e.conns = live
	if !p.allows(e.lastHop) {
		e.lastHop = ""
	}
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

// Get returns a connection to ep that has room for one more stream, with
// that stream reserved, dialing a new one when needed: to ep.Addr, or
// through one of ep.Via (another if one fails) with server name ep.SNI.
// cfg must check that the peer is service: through a gateway too, the
// identity checked is the endpoint's own. Get returns when ctx ends, even
// if a dial is in progress: the caller's route or per-try timeout covers
// the dial. The dial itself is shared by every caller that needs a new
// connection to the endpoint, and goes on while one of them still waits.
func (p *Pool) Get(ctx context.Context, ep Endpoint, service string, cfg *tls.Config) (*tunnel.Conn, error) {
	addr := ep.Addr
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, context.Cause(ctx))
	}
	key := poolKey{endpoint: ep.Key(), service: service}
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
		e.setPathLocked(pathOf(ep))
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
			delete(e.hops, c) // a no-op for direct connections
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
	pth, first := e.path, e.lastHop
	p.bg.Go(func() {
		defer cancel()
		c, hop, err := p.dialPath(ctx, addr, pth, first, cfg)
		e.mu.Lock()
		if err == nil && e.gone {
			c.Close()
			c, err = nil, fmt.Errorf("endpoint %s: removed from the pool while dialing", addr)
		}
		if err == nil && !e.path.allows(hop) {
			c.Close()
			c, err = nil, fmt.Errorf("endpoint %s: its path changed while dialing", addr)
		}
		if err == nil {
			e.conns = append(e.conns, c)
			if hop != "" {
				// Direct connections are not recorded: no entry is "".
				if e.hops == nil {
					e.hops = map[*tunnel.Conn]string{}
				}
				e.hops[c] = hop
				e.lastHop = hop
			}
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
func (p *Pool) Open(ctx context.Context, ep Endpoint, service string, cfg *tls.Config, header ...hpack.HeaderField) (*tunnel.Stream, error) {
	for try := 1; ; try++ {
		c, err := p.Get(ctx, ep, service, cfg)
		if err != nil {
			return nil, &DialError{Err: err}
		}
		s, err := c.Open(ctx, service, header...)
		if err == nil || !tunnel.Refused(err) || try == maxRefusedOpens || ctx.Err() != nil {
			return s, err
		}
	}
}

// dialPath connects to addr along pth: directly, or through the gateways
// of pth.via, first (the last one that worked) and then the others from a
// random one on, each with an even share of what is left of ctx. A
// gateway that refuses the connection or ends it before the handshake is
// done is passed over; a handshake whose peer certificate was rejected is
// the answer (another gateway reaches the same peer). It returns the hop
// the connection went through, "" for direct.
func (p *Pool) dialPath(ctx context.Context, addr string, pth path, first string, cfg *tls.Config) (*tunnel.Conn, string, error) {
	if len(pth.via) == 0 {
		c, err := p.dial(ctx, addr, "", "", cfg)
		return c, "", err
	}
	order := make([]string, 0, len(pth.via))
	if pth.allows(first) {
		order = append(order, first)
	}
	start := rand.IntN(len(pth.via))
	for i := range pth.via {
		if h := pth.via[(start+i)%len(pth.via)]; h != first {
			order = append(order, h)
		}
	}
	var errs []error
	for i, hop := range order {
		hctx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok && i < len(order)-1 {
			hctx, cancel = context.WithTimeout(ctx, time.Until(dl)/time.Duration(len(order)-i))
		}
		c, err := p.dial(hctx, addr, hop, pth.sni, cfg)
		cancel()
		if err == nil {
			return c, hop, nil
		}
		errs = append(errs, err)
		if certs.RejectReason(err) != "other" || ctx.Err() != nil {
			break
		}
	}
	return nil, "", errors.Join(errs...)
}

// dial connects to addr within ctx: TCP (to hop, a network gateway, when
// set), TLS (with server name sni when set) and the tunnel's start.
func (p *Pool) dial(ctx context.Context, addr, hop, sni string, cfg *tls.Config) (*tunnel.Conn, error) {
	target, what := addr, addr
	if hop != "" {
		target, what = hop, addr+" via gateway "+hop
	}
	d := net.Dialer{KeepAlive: 30 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		p.metrics.Handshakes.WithLabelValues("client", "error").Inc()
		return nil, fmt.Errorf("dial %s: %w", what, err)
	}
	addr = what
	cork := tunnel.NewCork(netconn.Raw(nc))
	before := p.Guard.Before()
	if p.Guard != nil {
		cfg = p.fullHandshakes(cfg)
	}
	if sni != "" {
		// Cloned per dial (dials are rare): the name is the gateway's
		// routing key only; VerifyConnection still checks the SPIFFE ID.
		cfg = cfg.Clone()
		cfg.ServerName = sni
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

// Forget closes idle connections to endpoints not in keep (by Key), so
// that removed endpoints do not hold sockets, and retires the connections
// of kept endpoints whose path changed (a gateway left). Connections with
// open streams close when their streams end; a dial in progress to a
// removed endpoint keeps nothing.
func (p *Pool) Forget(keep map[string]Endpoint) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.entries {
		if ep, ok := keep[k.endpoint]; ok {
			e.mu.Lock()
			e.setPathLocked(pathOf(ep))
			e.mu.Unlock()
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
