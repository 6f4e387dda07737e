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

	cfg     tunnel.Config
	timeout time.Duration
	metrics *Metrics

	mu      sync.Mutex
	entries map[poolKey]*poolEntry
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
	c, err := tunnel.NewClient(tc, tcfg)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("tunnel to %s: %w", addr, err)
	}
	return c, nil
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
