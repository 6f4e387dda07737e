package l4

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
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
	// TLS is the client configuration; it must verify that the peer is
	// Service (certs.Source.ClientConfig with certs.ExpectService).
	TLS *tls.Config
	// Pool holds the connections; shared by all outbounds of a sidecar.
	Pool *Pool
	// Logger; nil discards.
	Logger *slog.Logger
	// Metrics; nil means the pool's.
	Metrics *Metrics
	// HalfCloseTimeout bounds waiting for the client to finish once the
	// peer has; zero means DefaultHalfCloseTimeout.
	HalfCloseTimeout time.Duration

	once     sync.Once
	bal      *balancer
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
		o.bal = newBalancer()
		o.conns = map[net.Conn]struct{}{}
	})
}

// Serve accepts client connections on l until it is closed.
func (o *Outbound) Serve(l net.Listener) error {
	o.init()
	return serve(l, func(c net.Conn) {
		// Counted before its goroutine starts, so that Drain sees it.
		o.inflight.add()
		o.mu.Lock()
		o.conns[c] = struct{}{}
		o.mu.Unlock()
		go func() {
			defer o.inflight.done()
			o.handle(c)
			o.mu.Lock()
			delete(o.conns, c)
			o.mu.Unlock()
		}()
	})
}

// gate is the request body of a CONNECT stream: it reads the client
// connection only once the peer has accepted the stream, so that a refused
// attempt consumed nothing and can be retried elsewhere.
type gate struct {
	r         io.Reader
	open      chan struct{}
	abort     chan struct{}
	abortOnce sync.Once
	done      chan struct{} // closed when Read first fails (EOF included)
	doneOnce  sync.Once
	n         atomic.Int64
}

func newGate(r io.Reader) *gate {
	return &gate{r: r, open: make(chan struct{}), abort: make(chan struct{}), done: make(chan struct{})}
}

func (g *gate) Read(p []byte) (int, error) {
	select {
	case <-g.open:
	case <-g.abort:
		g.finish()
		return 0, io.EOF
	}
	n, err := g.r.Read(p)
	g.n.Add(int64(n))
	if err != nil {
		g.finish()
	}
	return n, err
}

func (g *gate) finish() { g.doneOnce.Do(func() { close(g.done) }) }

// Close is called by the transport when it is done with the body.
func (g *gate) Close() error {
	g.abortOnce.Do(func() { close(g.abort) })
	return nil
}

func (o *Outbound) handle(client net.Conn) {
	defer client.Close()
	ctx := context.Background()
	tried := map[string]bool{}
	var lastErr error
	for range maxAttempts {
		ep, ok := o.bal.pick(o.Endpoints(), tried)
		if !ok {
			break
		}
		tried[ep.Addr] = true
		cc, err := o.Pool.get(ctx, ep.Addr, o.Service, o.TLS)
		if err != nil {
			o.bal.failed(ep.Addr)
			lastErr = err
			o.Logger.Warn("upstream endpoint unreachable", "service", o.Service, "endpoint", ep.Addr, "instance", ep.Instance, "err", err)
			continue
		}
		body := newGate(client)
		req := &http.Request{
			Method:        http.MethodConnect,
			URL:           &url.URL{Host: o.Service},
			Host:          o.Service,
			Header:        http.Header{},
			Body:          body,
			ContentLength: -1,
		}
		req = req.WithContext(ctx)
		o.bal.start(ep.Addr)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			o.bal.done(ep.Addr)
			o.bal.failed(ep.Addr)
			lastErr = err
			continue
		}
		if resp.StatusCode != http.StatusOK {
			o.bal.done(ep.Addr)
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			result := "error"
			if resp.StatusCode == http.StatusForbidden {
				result = "denied"
			}
			o.Metrics.Connections.WithLabelValues("outbound", o.Service, result).Inc()
			o.Logger.Info("upstream refused connection", "service", o.Service, "endpoint", ep.Addr, "status", resp.StatusCode, "reason", string(msg))
			return
		}
		o.bal.succeeded(ep.Addr)
		o.pipe(client, body, resp.Body)
		o.bal.done(ep.Addr)
		return
	}
	if lastErr == nil {
		lastErr = errNoEndpoints
	}
	o.Metrics.Connections.WithLabelValues("outbound", o.Service, "error").Inc()
	o.Logger.Warn("no upstream connection", "service", o.Service, "err", lastErr)
}

// pipe runs an accepted stream: client bytes flow through body (now
// opened), the peer's through respBody.
func (o *Outbound) pipe(client net.Conn, body *gate, respBody io.ReadCloser) {
	defer respBody.Close()
	o.Metrics.Connections.WithLabelValues("outbound", o.Service, "ok").Inc()
	gauge := o.Metrics.Active.WithLabelValues("outbound")
	gauge.Inc()
	defer gauge.Dec()

	close(body.open)
	n, err := copyBuf(client, respBody)
	o.Metrics.Bytes.WithLabelValues("outbound", o.Service, "received").Add(float64(n))
	if isClosed(err) {
		// The peer finished sending; let the client finish too, within
		// bounds (the deferred close in handle ends it otherwise).
		closeWrite(client)
		if !waitHalfClose(body.done, o.HalfCloseTimeout) {
			client.Close()
			<-body.done
		}
	} else {
		client.Close()
	}
	o.Metrics.Bytes.WithLabelValues("outbound", o.Service, "sent").Add(float64(body.n.Load()))
}

// Drain waits for open client connections to end until ctx ends, then
// closes the rest. Close the listener first.
func (o *Outbound) Drain(ctx context.Context) error {
	o.init()
	if o.inflight.wait(ctx) == nil {
		return nil
	}
	o.mu.Lock()
	n := len(o.conns)
	for c := range o.conns {
		c.Close()
	}
	o.mu.Unlock()
	return fmt.Errorf("drain %s: closed %d connections still open: %w", o.Service, n, ctx.Err())
}
