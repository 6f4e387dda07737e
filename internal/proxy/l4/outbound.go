package l4

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/netconn"

	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
)

// maxAttempts bounds the endpoints one client connection tries. Only
// attempts that failed before the peer accepted the stream are retried, so
// no client byte is ever sent twice.
const maxAttempts = 3

// Outbound accepts local client connections for one upstream service and
// carries each as a CONNECT stream to a healthy endpoint of it.
type Outbound struct {
	// Service is the upstream service; the peer's SVID must name it.
	Service string
	// Endpoints returns the current healthy endpoints.
	Endpoints func() []Endpoint
	// Unreachable, when set, says why endpoints are missing (networks
	// whose gateways are all down), for the log of a connection that
	// found none.
	Unreachable func() string
	// TLS is the client configuration; it must verify that the peer is
	// Service (certs.Source.ClientConfig with certs.ExpectService).
	TLS *tls.Config
	// Pool holds the connections; shared by all outbounds of a sidecar.
	Pool *Pool
	// MaxConnections, when set, returns the circuit breaker's bound on
	// open client connections (0: none); one over it is closed at once.
	MaxConnections func() int
	// Logger; nil discards.
	Logger *slog.Logger
	// Metrics; nil means the pool's.
	Metrics *Metrics
	// Acceptor runs Serve's accept loop (the listener's name, limits and
	// counters); nil means one with the default limit that logs on
	// Logger.
	Acceptor *netconn.Acceptor

	once sync.Once
	// ctx ends when Drain gives up: opening streams in progress end then.
	ctx      context.Context
	cancel   context.CancelFunc
	bal      *balance.Balancer
	inflight inflight
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

func (o *Outbound) init() {
	o.once.Do(func() {
		if o.Logger == nil {
			o.Logger = slog.New(slog.DiscardHandler)
		}
		if o.Metrics == nil {
			o.Metrics = o.Pool.metrics
		}
		o.bal = balance.New()
		o.conns = map[net.Conn]struct{}{}
		o.ctx, o.cancel = context.WithCancel(context.Background())
	})
}

// Serve accepts client connections on l until it is closed, through
// Acceptor.
func (o *Outbound) Serve(l net.Listener) error {
	o.init()
	acc := o.Acceptor
	if acc == nil {
		acc = &netconn.Acceptor{Name: "upstream:" + o.Service, Logger: o.Logger}
	}
	return acc.Serve(l, o.Handle)
}

// ServeConn carries one accepted client connection in a new goroutine.
func (o *Outbound) ServeConn(c net.Conn) {
	if o.admit(c) {
		go o.serveAdmitted(c)
	}
}

// Handle carries one accepted client connection on the calling goroutine
// and returns when it is done: what an Acceptor runs.
func (o *Outbound) Handle(c net.Conn) {
	if o.admit(c) {
		o.serveAdmitted(c)
	}
}

// admit applies the circuit breaker and counts c in, or closes it.
func (o *Outbound) admit(c net.Conn) bool {
	o.init()
	if o.MaxConnections != nil {
		if max := o.MaxConnections(); max > 0 && o.inflight.n.Load() >= int64(max) {
			o.Metrics.Connections.WithLabelValues("outbound", o.Service, "overflow").Inc()
			o.Logger.Debug("circuit breaker: connection refused", "upstream", o.Service, "maxConnections", max)
			c.Close()
			return false
		}
	}
	// Counted before its goroutine starts (for ServeConn), so that Drain
	// sees it.
	o.inflight.add()
	o.mu.Lock()
	o.conns[c] = struct{}{}
	o.mu.Unlock()
	return true
}

func (o *Outbound) serveAdmitted(c net.Conn) {
	defer o.inflight.done()
	o.handle(c)
	o.mu.Lock()
	delete(o.conns, c)
	o.mu.Unlock()
}

// openTimeout bounds waiting for a peer to answer a new stream; a peer that
// does not answer in time took nothing, so the next endpoint is tried.
const openTimeout = 10 * time.Second

// failed takes an endpoint's failure to open a stream and reports whether
// the client connection is done: the peer refused it, and another
// endpoint would decide the same. Otherwise the next endpoint is tried.
func (o *Outbound) failed(ep Endpoint, err error) bool {
	o.bal.Done(ep.Key())
	var refused *tunnel.StatusError
	if errors.As(err, &refused) {
		result := "error"
		if refused.Status == http.StatusForbidden {
			result = "denied"
		}
		o.Metrics.Connections.WithLabelValues("outbound", o.Service, result).Inc()
		o.Logger.Info("upstream refused connection", "upstream", o.Service, "endpoint", ep.Addr, "status", refused.Status, "reason", refused.Reason)
		return true
	}
	o.bal.Failed(ep.Key())
	var dialErr *DialError
	if errors.As(err, &dialErr) {
		o.Logger.Warn("upstream endpoint unreachable", "upstream", o.Service, "endpoint", ep.Addr, "endpointInstance", ep.Instance, "err", err)
	}
	return false
}

func (o *Outbound) handle(client net.Conn) {
	defer client.Close()
	tried := map[string]bool{}
	var lastErr error
	for range maxAttempts {
		ep, ok := o.bal.Pick(o.Endpoints(), tried)
		if !ok {
			break
		}
		tried[ep.Key()] = true
		o.bal.Start(ep.Key())
		ctx, cancel := context.WithTimeout(o.ctx, openTimeout)
		s, err := o.Pool.Open(ctx, ep, o.Service, o.TLS)
		cancel()
		if err != nil {
			// Kept in this branch: errors.As's targets escape, and a new
			// connection should not pay for them.
			if o.failed(ep, err) {
				return
			}
			lastErr = err
			continue
		}
		o.bal.Succeeded(ep.Key())
		o.Metrics.Connections.WithLabelValues("outbound", o.Service, "ok").Inc()
		gauge := o.Metrics.Active.WithLabelValues("outbound")
		gauge.Inc()
		o.Metrics.Splice("outbound", o.Service, s, client)
		gauge.Dec()
		o.bal.Done(ep.Key())
		return
	}
	if lastErr == nil {
		lastErr = errNoEndpoints
		if o.Unreachable != nil {
			if why := o.Unreachable(); why != "" {
				lastErr = fmt.Errorf("%w: %s", errNoEndpoints, why)
			}
		}
	}
	o.Metrics.Connections.WithLabelValues("outbound", o.Service, "error").Inc()
	o.Logger.Warn("no upstream connection", "upstream", o.Service, "err", lastErr)
}

// Drain waits for open client connections to end until ctx ends, then
// closes the rest, ends the opens in progress and waits for their
// goroutines, which end at once. Close the listener first.
func (o *Outbound) Drain(ctx context.Context) error {
	o.init()
	if o.inflight.wait(ctx) == nil {
		return nil
	}
	o.cancel()
	o.mu.Lock()
	n := len(o.conns)
	for c := range o.conns {
		c.Close()
	}
	o.mu.Unlock()
	o.inflight.wait(context.Background())
	return fmt.Errorf("drain %s: closed %d connections still open: %w", o.Service, n, ctx.Err())
}
