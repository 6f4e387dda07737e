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
// multiplex on them; more than one only helps when a connection's stream
// limit or flow-control window is reached.
const maxConnsPerEndpoint = 4

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

	cfg     tunnel.Config
	timeout time.Duration
	metrics *Metrics

	mu      sync.Mutex
	entries map[poolKey]*poolEntry
	fresh   sync.Map // *tls.Config -> its copy without session resumption
}

type poolKey struct {
	addr    string
	service string
}

type poolEntry struct {
	mu    sync.Mutex // held while dialing, so that a burst makes one connection
	conns []*tunnel.Conn
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
	return &Pool{
		cfg:     tunnel.Config{HalfCloseTimeout: halfClose},
		timeout: dialTimeout,
		metrics: m,
		entries: map[poolKey]*poolEntry{},
	}
}

// Get returns a connection to addr that has room for one more stream, with
// that stream reserved, dialing a new one when needed. cfg must check that
// the peer is service.
func (p *Pool) Get(addr, service string, cfg *tls.Config) (*tunnel.Conn, error) {
	key := poolKey{addr: addr, service: service}
	p.mu.Lock()
	e := p.entries[key]
	if e == nil {
		e = &poolEntry{}
		p.entries[key] = e
	}
	p.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
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
	e.conns = live
	if pick != nil {
		return pick, nil
	}
	if len(e.conns) >= maxConnsPerEndpoint {
		return nil, fmt.Errorf("endpoint %s: %d connections, all at their stream limit", addr, len(e.conns))
	}
	c, err := p.dial(addr, cfg)
	if err != nil {
		return nil, err
	}
	if !c.Reserve() {
		c.Close()
		return nil, fmt.Errorf("endpoint %s: new connection refuses streams", addr)
	}
	e.conns = append(e.conns, c)
	return c, nil
}

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
		c, err := p.Get(addr, service, cfg)
		if err != nil {
			return nil, &DialError{Err: err}
		}
		s, err := c.Open(ctx, service, header...)
		if err == nil || !tunnel.Refused(err) || try == maxRefusedOpens || ctx.Err() != nil {
			return s, err
		}
	}
}

func (p *Pool) dial(addr string, cfg *tls.Config) (*tunnel.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
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
// their streams end.
func (p *Pool) Forget(keep map[string]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.entries {
		if keep[k.addr] {
			continue
		}
		delete(p.entries, k)
		go func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			for _, c := range e.conns {
				c.Shutdown()
			}
		}()
	}
}

// Close closes every pooled connection.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.entries {
		delete(p.entries, k)
		e.mu.Lock()
		for _, c := range e.conns {
			c.Close()
		}
		e.mu.Unlock()
	}
}

var errNoEndpoints = errors.New("no healthy endpoints")
