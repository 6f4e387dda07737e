package l4

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// maxConnsPerEndpoint bounds the mTLS connections to one endpoint. Streams
// multiplex on them; more than one only helps when a connection's stream
// limit or flow-control window is reached.
const maxConnsPerEndpoint = 4

// Pool keeps multiplexed mTLS connections to endpoints, keyed by the
// endpoint address and the TLS configuration that checks its identity.
// It is safe for concurrent use; its zero value is not: use NewPool.
type Pool struct {
	tr      *http2.Transport
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
	conns []*http2.ClientConn
}

// NewPool returns an empty pool. dialTimeout bounds TCP connect plus TLS
// handshake; zero means 5s.
func NewPool(dialTimeout time.Duration, m *Metrics) *Pool {
	if dialTimeout == 0 {
		dialTimeout = 5 * time.Second
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Pool{
		tr: &http2.Transport{
			MaxReadFrameSize:           maxFrameSize,
			StrictMaxConcurrentStreams: true,
			ReadIdleTimeout:            30 * time.Second,
			PingTimeout:                10 * time.Second,
			IdleConnTimeout:            5 * time.Minute,
		},
		timeout: dialTimeout,
		metrics: m,
		entries: map[poolKey]*poolEntry{},
	}
}

// get returns a connection to addr that has room for one more stream, with
// that stream reserved, dialing a new one when needed.
func (p *Pool) get(ctx context.Context, addr, service string, cfg *tls.Config) (*http2.ClientConn, error) {
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
	var pick *http2.ClientConn
	for _, cc := range e.conns {
		st := cc.State()
		if st.Closed || st.Closing {
			continue
		}
		live = append(live, cc)
		if pick == nil && cc.ReserveNewRequest() {
			pick = cc
		}
	}
	e.conns = live
	if pick != nil {
		return pick, nil
	}
	if len(e.conns) >= maxConnsPerEndpoint {
		return nil, fmt.Errorf("endpoint %s: %d connections, all at their stream limit", addr, len(e.conns))
	}
	cc, err := p.dial(ctx, addr, cfg)
	if err != nil {
		return nil, err
	}
	if !cc.ReserveNewRequest() {
		cc.Close()
		return nil, fmt.Errorf("endpoint %s: new connection refuses streams", addr)
	}
	e.conns = append(e.conns, cc)
	return cc, nil
}

func (p *Pool) dial(ctx context.Context, addr string, cfg *tls.Config) (*http2.ClientConn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{KeepAlive: 30 * time.Second}, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		p.metrics.Handshakes.WithLabelValues("client", "error").Inc()
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	tc := c.(*tls.Conn)
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
	cc, err := p.tr.NewClientConn(tc)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("http2 to %s: %w", addr, err)
	}
	return cc, nil
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
			for _, cc := range e.conns {
				_ = cc.Shutdown(context.Background())
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
		for _, cc := range e.conns {
			cc.Close()
		}
		e.mu.Unlock()
	}
}

var errNoEndpoints = errors.New("no healthy endpoints")
