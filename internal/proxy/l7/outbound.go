package l7

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/httpmatch"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/proxy/h1"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/tracing"
)

// upstreamTimeField is UpstreamTimeHeader as a field name.
var upstreamTimeField = strings.ToLower(UpstreamTimeHeader)

// ALPN is the protocol of L7 connections between sidecars: plain HTTP/2,
// beside the CONNECT tunnel's protocol on the same port.
const ALPN = "h2"

// maxReplayBody is the largest request body kept for a retry; larger ones
// stream through and are not retried.
const maxReplayBody = 64 << 10

// Outbound serves the local app's HTTP requests for one upstream service:
// it routes each to a version and an endpoint and sends it over a pooled
// HTTP/2 mTLS connection, retrying and timing out as the route says.
type Outbound struct {
	// Service is the upstream service; Source is this proxy's.
	Service, Source string
	// State returns the current router and healthy endpoints of Service.
	State func() (*Router, []balance.Endpoint)
	// Conn returns a tunnel connection to ep's sidecar with room for one
	// request stream reserved (l4.Pool.Get); its TLS must check that the
	// peer is Service. It must return when ctx ends (the route's or the
	// try's timeout, or the caller gone), a dial in progress or not.
	Conn func(ctx context.Context, ep balance.Endpoint) (*tunnel.Conn, error)
	// Limits returns the service's circuit breakers now; nil or a nil
	// result means none.
	Limits func() *v1.ServiceLimits
	// DialUpgrade opens a connection to ep's sidecar for an upgraded
	// (WebSocket) request; nil refuses upgrades with 501.
	DialUpgrade func(ctx context.Context, ep balance.Endpoint) (net.Conn, error)
	// Unreachable, when set, says why endpoints are missing (networks
	// whose gateways are all down); the 503 for no endpoint carries it.
	Unreachable func() string
	// Logger; nil discards.
	Logger *slog.Logger
	// Metrics; nil means unregistered ones.
	Metrics *Metrics
	// Tracer, when set, gives each request a client span, which the
	// request's traceparent then names; nil traces nothing.
	Tracer *tracing.Tracer

	once     sync.Once
	limit    limiter
	bal      *balance.Balancer
	active   atomic.Int64
	retrying atomic.Int64
	// httpOnly serves HTTP/2 clients' streams the http.Request way: the
	// reference the fields path is tested against.
	httpOnly bool
}

func (o *Outbound) init() {
	o.once.Do(func() {
		if o.Logger == nil {
			o.Logger = slog.New(slog.DiscardHandler)
		}
		if o.Metrics == nil {
			o.Metrics = NewMetrics(nil)
		}
		o.bal = balance.New()
	})
}

// ServeHTTP proxies one request of the local app over HTTP/1.1 (or of the
// ingress): checked as an http.Request, then routed and sent on as the
// fields path's request (request.go).
func (o *Outbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.init()
	// Only the spellings of fields the proxies set or strip: the others
	// travel on for the inbound's rules to see, and end there.
	o.Metrics.dropUnderscored(r, "outbound", true)
	lim := clientLimits
	if r.Context().Value(fromEdgeKey{}) != nil {
		lim = meshLimits // the ingress's fields are not the client's
	}
	if err := sanitizeWithin(r, lim); err != nil {
		bad := err.(*badRequest)
		o.Metrics.refused(o.Logger, r, "outbound", o.Source, o.Service, bad)
		refuse(w, bad)
		o.Metrics.observe("outbound", o.Source, o.Service, "", "", bad.status, time.Now())
		return
	}
	// The mesh's own fields are for proxies to write: an app does not
	// speak for the mesh to its peer (the peer's inbound replaces the
	// peer header, and would strip these too).
	stripInternal(r.Header)
	up, err := prepareRequest(r)
	if err != nil {
		refuse(w, &badRequest{http.StatusBadRequest, "trellis: " + err.Error(), ReasonStream})
		return
	}
	var sp *tracing.Span
	if o.Tracer == nil {
		setRequestContext(r.Header)
	} else {
		setRequestID(r.Header)
		sp = o.Tracer.StartClient(r.Header, r.Method, o.Service)
	}
	if up != "" {
		o.serveUpgrade(w, r, up, sp)
		return
	}
	var x request
	fromHTTP(&x, r)
	o.proceed(w, &x, sp)
}

// ServeStream serves a request stream of an HTTP/2 client on the fields
// path, as ServeHTTP serves an HTTP/1.1 client's request, and reports
// whether it did (always, but for the tests' reference outbound).
func (o *Outbound) ServeStream(s *tunnel.Stream) bool {
	if o.httpOnly {
		return false
	}
	o.init()
	x := &fieldsExchange{}
	x.w.s = s
	defer x.w.ctx.cancel()
	o.serveStream(&x.w, &x.r, s)
	x.w.finish()
	return true
}

// ServeHead serves an HTTP/1.1 client's request read as fields (see
// h1.Server.ServeHead) as ServeHTTP serves one read as an http.Request,
// with no http.Request, header map or url.URL made for it.
// FuzzOutboundHeadPath holds the two to the same answers and the same
// requests at the app.
func (o *Outbound) ServeHead(w http.ResponseWriter, h *h1.RequestHead) {
	o.init()
	r := &request{ctx: h.Ctx, method: h.Method, authority: h.Host, target: h.Target, fields: h.Fields,
		wire: h.Room, length: h.ContentLength, in: h.Body, readAhead: true, fromH1: true}
	o.dropMeshUnderscored(r)
	o.serveFields(w, r)
}

func (o *Outbound) serveStream(w *streamWriter, r *request, s *tunnel.Stream) {
	readOutboundStream(r, s, &w.ctx)
	if r.bad == nil {
		o.dropMeshUnderscored(r)
	}
	o.serveFields(w, r)
}

// serveFields checks, routes, sends and answers a request on the fields
// path, its mesh-spelled underscored fields dropped.
func (o *Outbound) serveFields(w http.ResponseWriter, r *request) {
	if bad := r.check(clientLimits); bad != nil {
		o.Metrics.refusedRequest(o.Logger, r.ctx, r.method, r.logPath(), r.authority, "outbound", o.Source, o.Service, bad)
		refuse(w, bad)
		o.Metrics.observe("outbound", o.Source, o.Service, "", "", bad.status, time.Now())
		return
	}
	r.fields = deleteFields(r.fields, isInternalField)
	r.prepare()
	var sp *tracing.Span
	if o.Tracer == nil {
		r.setContext()
	} else {
		r.setRequestID()
		tp, ts := r.traceContext()
		sp = o.Tracer.StartClientFrom(tp, ts, r.method, o.Service)
		r.inject(sp)
	}
	o.proceed(w, r, sp)
}

// proceed routes, sends and answers a checked request.
func (o *Outbound) proceed(w http.ResponseWriter, r *request, sp *tracing.Span) {
	resp, err := o.roundTrip(r, sp)
	if err != nil {
		sp.End("", "", errorStatus(err), 1) // when roundTrip did not
		o.fail(w, r, err)
		return
	}
	writeResponse(w, resp)
}

// serveUpgrade sends an upgrade request (WebSocket) on a stream of its
// own and joins the client's connection to it once the upstream switched.
func (o *Outbound) serveUpgrade(w http.ResponseWriter, r *http.Request, up string, sp *tracing.Span) {
	start := time.Now()
	rule, _, cands, err := o.route(matchRequest(r), start, sp)
	if err == nil {
		if rule.hasRW {
			r.URL.RawPath, r.URL.Path = rule.rewritePaths(r.URL.EscapedPath(), r.URL.Path)
		}
		ep, _ := o.bal.Pick(cands, nil)
		var resp *http.Response
		if resp, err = o.roundTripUpgrade(r, rule, ep, start, sp); err == nil {
			if resp.StatusCode != http.StatusSwitchingProtocols {
				writeResponse(w, httpResponse(resp)) // refused: relayed as any answer
				return
			}
			err = serveUpgrade(w, up, resp)
		}
	}
	if err != nil {
		sp.End("", "", errorStatus(err), 1) // when roundTripUpgrade did not
		o.failHTTP(w, r.Context(), err)
	}
}

func refuse(w http.ResponseWriter, e *badRequest) {
	if e.status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", allowHeader)
	}
	if e.status == http.StatusForbidden {
		// An authorization refusal: the caller's proxy logs it (denied).
		w.Header().Set(DeniedHeader, strings.TrimPrefix(e.msg, deniedPrefix))
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Connection", "close")
	w.WriteHeader(e.status)
	io.WriteString(w, e.msg+"\n")
}

// dialError marks a failure to reach an endpoint: nothing was sent, so any
// request may be retried elsewhere.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// maxRefusedSends bounds how often one attempt is sent again because the
// peer refused its stream unseen.
const maxRefusedSends = 3

// send makes one attempt of req on ep, until ctx ends. A stream the peer
// refused before it read anything (its connection was going away, as a
// retired connection does) is sent again on a fresh connection whatever
// the route's retry policy says, when the body can be had again: nothing
// of it reached the app, and retiring a connection must fail no request.
func (o *Outbound) send(ctx context.Context, req *request, ep balance.Endpoint) (*response, error) {
	for try := 1; ; try++ {
		conn, err := o.Conn(ctx, ep)
		if err != nil {
			return nil, &dialError{err: fmt.Errorf("connect to %s: %w", ep.Addr, err)}
		}
		resp, err := sendRequest(ctx, conn, req)
		if err == nil || !tunnel.Refused(err) || try == maxRefusedSends || ctx.Err() != nil {
			return resp, err
		}
		// A body sendRequest held (read ahead, so req.in is nil now)
		// comes back through getBody as well.
		switch {
		case req.getBody != nil:
			body, berr := req.getBody()
			if berr != nil {
				return nil, err
			}
			req.in = body
		case req.in != nil:
			return nil, err
		}
	}
}

// proxyError is an answer the proxy gives itself.
type proxyError struct {
	status int
	msg    string
}

func (e *proxyError) Error() string { return e.msg }

// errorStatus is the status the proxy answers err with.
func errorStatus(err error) int {
	var pe *proxyError
	if errors.As(err, &pe) {
		return pe.status
	}
	return http.StatusBadGateway
}

func (o *Outbound) fail(w http.ResponseWriter, r *request, err error) {
	o.failHTTP(w, r.ctx, err)
}

// failHTTP answers a request (its context ctx) that failed with err.
func (o *Outbound) failHTTP(w http.ResponseWriter, ctx context.Context, err error) {
	status, msg := http.StatusBadGateway, "trellis: upstream "+o.Service+" failed: "+err.Error()
	var pe *proxyError
	if errors.As(err, &pe) {
		status, msg = pe.status, pe.msg
	} else if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return // the caller went away
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
}

// route picks the rule, the version and the endpoints for a request
// (what rules see of it, m); with none, it observes the 503 it returns.
func (o *Outbound) route(m *httpmatch.Request, start time.Time, sp *tracing.Span) (*Rule, string, []balance.Endpoint, error) {
	router, eps := o.State()
	rule := router.MatchRequest(m)
	version := rule.PickVersion()
	cands := eps // read only: Pick does not change it
	if version != "" {
		cands = nil
		for _, e := range eps {
			if e.Version == version {
				cands = append(cands, e)
			}
		}
	}
	if len(cands) == 0 {
		what := o.Service
		if version != "" {
			what += " version " + version
		}
		msg := "trellis: no healthy endpoint of " + what
		if o.Unreachable != nil {
			if why := o.Unreachable(); why != "" {
				msg += " (" + why + ")"
				// Per request, as the access log is: the reason is what
				// an operator looks for in a 503.
				o.Logger.Warn("no healthy endpoint", "upstream", o.Service, "reason", why)
			}
		}
		o.Metrics.observe("outbound", o.Source, o.Service, rule.Name, version, http.StatusServiceUnavailable, start)
		sp.End(rule.Name, version, http.StatusServiceUnavailable, 0)
		return rule, version, nil, &proxyError{http.StatusServiceUnavailable, msg}
	}
	return rule, version, cands, nil
}

// roundTrip routes, balances and retries one request. It ends sp (nil
// when tracing is off) where it observes the request's metrics.
func (o *Outbound) roundTrip(req *request, sp *tracing.Span) (resp *response, err error) {
	clientBody := req.in // before a retry's copy replaces it
	holdsSlot := false   // of the circuit breaker, until the body is done
	start := time.Now()
	rule, version, cands, err := o.route(req.matchRequest(), start, sp)
	if err != nil {
		return nil, err
	}
	if rule.hasRW {
		req.escaped, req.path = rule.rewritePaths(req.escaped, req.path)
	}

	if lim := o.limits(); lim != nil && lim.MaxRequests > 0 {
		wait, cancel := context.WithTimeout(req.ctx, rule.Timeout)
		ok := o.limit.acquire(wait, lim.MaxRequests, lim.MaxPendingRequests)
		cancel()
		if !ok {
			o.Metrics.Overflows.WithLabelValues(o.Source, o.Service).Inc()
			o.Metrics.observe("outbound", o.Source, o.Service, rule.Name, version, http.StatusServiceUnavailable, start)
			sp.End(rule.Name, version, http.StatusServiceUnavailable, 0)
			return nil, &proxyError{http.StatusServiceUnavailable, fmt.Sprintf(
				"trellis: circuit breaker: %d requests to %s in flight and %d waiting (maxRequests, maxPendingRequests)",
				lim.MaxRequests, o.Service, lim.MaxPendingRequests)}
		}
		// The slot is held until the response body is done.
		released := false
		release := func() {
			if !released {
				released = true
				o.limit.release()
			}
		}
		defer func() {
			if resp == nil {
				release()
			}
		}()
		holdsSlot = true
	}

	attempts := 1
	if rule.Retry != nil && (idempotent(req.method) || rule.Retry.nonIdempotent) && replayable(req) {
		attempts = rule.Retry.Attempts
	}
	o.active.Add(1)
	defer o.active.Add(-1)

	// The route timeout covers the wait for response headers, retries
	// included; the body then streams for as long as it takes.
	ctx, cancel := context.WithCancel(req.ctx)
	timedOut := &req.timedOut
	timer := time.AfterFunc(rule.Timeout, func() { timedOut.Store(true); cancel() })
	fail := func(err error, attempt int) (*response, error) {
		timer.Stop()
		cancel()
		if timedOut.Load() {
			o.Metrics.observe("outbound", o.Source, o.Service, rule.Name, version, http.StatusGatewayTimeout, start)
			sp.End(rule.Name, version, http.StatusGatewayTimeout, attempt)
			return nil, &proxyError{http.StatusGatewayTimeout, fmt.Sprintf("trellis: upstream %s did not answer within %s (route %s)", o.Service, rule.Timeout, rule.Name)}
		}
		o.Metrics.observe("outbound", o.Source, o.Service, rule.Name, version, http.StatusBadGateway, start)
		sp.End(rule.Name, version, http.StatusBadGateway, attempt)
		return nil, err
	}
	var tried map[string]bool // endpoints tried, once there may be retries
	if attempts > 1 {
		tried = map[string]bool{}
	}
	var lastErr error
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			if !o.takeRetry() {
				return fail(lastErr, attempt-1)
			}
			o.Metrics.Retries.WithLabelValues(o.Source, o.Service, rule.Name).Inc()
		}
		ep, ok := o.bal.Pick(cands, tried)
		if !ok {
			clear(tried) // every endpoint tried once: go round again
			ep, _ = o.bal.Pick(cands, tried)
		}
		// Like the route timeout, the per-try timeout ends at the headers.
		tryCtx, tryCancel := ctx, func() {}
		var perTryExpired atomic.Bool
		tryTimer := (*time.Timer)(nil)
		if attempts > 1 {
			tried[ep.Key()] = true
			tryCtx, tryCancel = context.WithCancel(ctx)
			tryTimer = time.AfterFunc(rule.Retry.PerTryTimeout, func() { perTryExpired.Store(true); tryCancel() })
		}
		if attempt > 1 {
			req.in, _ = req.getBody()
		}
		o.bal.Start(ep.Key())
		resp, err := o.send(tryCtx, req, ep)
		if tryTimer != nil && !tryTimer.Stop() && err == nil {
			// The answer came as the per-try timer fired: its context is
			// gone, so this attempt failed after all.
			resp.body.Close()
			resp, err = nil, context.DeadlineExceeded
		}
		if attempt > 1 {
			o.retrying.Add(-1)
		}
		if err == nil && resp.status >= 500 {
			o.errored(ep)
		}
		if err == nil && attempt < attempts && rule.Retry.retryStatus(resp) {
			o.bal.Done(ep.Key())
			tryCancel()
			// Drain a little so that the connection can be reused.
			io.Copy(io.Discard, io.LimitReader(resp.body, 64<<10))
			resp.body.Close()
			lastErr = fmt.Errorf("%s answered %d", ep.Instance, resp.status)
			continue
		}
		if err == nil && !timer.Stop() {
			resp.body.Close()
			o.bal.Done(ep.Key())
			tryCancel()
			return fail(context.DeadlineExceeded, attempt)
		}
		if err == nil {
			if resp.status < 500 {
				o.bal.Succeeded(ep.Key())
			}
			if resp.status == http.StatusForbidden {
				o.denied(req, resp)
			}
			resp.del(upstreamTimeField)
			resp.fields = append(resp.fields, hpack.HeaderField{Name: upstreamTimeField,
				Value: strconv.FormatInt(time.Since(start).Milliseconds(), 10)})
			// One struct for what ends with the body, not a closure: the
			// variables a closure captured would each cost an allocation.
			// In the request's own allocation, which lives as long.
			req.tracked = trackedBody{ReadCloser: resp.body, o: o, req: req, rule: rule, ep: ep,
				code: resp.status, attempt: attempt, start: start, sp: sp, holdsSlot: holdsSlot,
				tryCancel: tryCancel, cancel: cancel}
			resp.body = &req.tracked
			return resp, nil
		}
		o.bal.Done(ep.Key())
		var de *dialError
		clientFault := clientBodyFailed(clientBody)
		if errors.As(err, &de) {
			o.bal.Failed(ep.Key())
		} else if req.ctx.Err() == nil && !clientFault {
			o.errored(ep)
		}
		tryCancel()
		lastErr = err
		if clientFault || timedOut.Load() || req.ctx.Err() != nil || attempt >= attempts || !rule.Retry.retryError(err, perTryExpired.Load()) {
			return fail(lastErr, attempt)
		}
	}
}

// clientBodyFailed reports whether the client's request body failed
// (malformed framing, a stall, a client gone mid-body): the attempt failed
// by the client's doing, which must not count against the endpoint (a
// client could eject healthy endpoints for everyone) nor be retried.
func clientBodyFailed(body io.Reader) bool {
	f, ok := body.(interface{ Failure() *h1.ProtocolError })
	return ok && f.Failure() != nil
}

func (o *Outbound) limits() *v1.ServiceLimits {
	if o.Limits == nil {
		return nil
	}
	return o.Limits()
}

// access writes the access log line of a request (at info level: a JSON
// access log with --log-format json).
func (o *Outbound) access(req *request, route string, ep balance.Endpoint, code, attempts int, start time.Time) {
	if !o.Logger.Enabled(req.ctx, slog.LevelInfo) {
		return
	}
	o.Logger.LogAttrs(req.ctx, slog.LevelInfo, "access",
		slog.String("direction", "outbound"), slog.String("requestId", req.get("x-request-id")),
		slog.String("method", req.method), slog.String("path", req.path), slog.String("destination", o.Service),
		slog.String("route", route), slog.String("endpointInstance", ep.Instance), slog.String("version", ep.Version),
		slog.Int("status", code), slog.Int("attempts", attempts), slog.Duration("duration", time.Since(start)))
}

// DeniedHeader marks a 403 that the destination's proxy answered because
// no intention or permission allows the call; its value says why. The
// caller's proxy logs it, so that a denied call shows on both sides, not
// only as the app's error.
const DeniedHeader = "Trellis-Denied"

// deniedPrefix starts the body of an authorization refusal.
const deniedPrefix = "trellis: denied: "

// denied logs, at warn level and at most refusalsPerSecond lines a
// second, a call the destination refused by policy.
func (o *Outbound) denied(req *request, resp *response) {
	why := resp.get(deniedField)
	if why == "" {
		return // the app's own 403
	}
	n, ok := o.Metrics.denials.Take(time.Now(), refusalsPerSecond)
	if !ok {
		return
	}
	attrs := []slog.Attr{slog.String("upstream", o.Service), slog.String("method", cut(req.method, 32)),
		slog.String("path", cut(req.path, 512)), slog.String("reason", cut(why, 512))}
	if n > 0 {
		attrs = append(attrs, slog.Int("suppressed", n))
	}
	o.Logger.LogAttrs(req.ctx, slog.LevelWarn, "call denied by the destination's policy", attrs...)
}

// errored counts a failed request against ep: outlier detection.
func (o *Outbound) errored(ep balance.Endpoint) {
	if o.bal.Errored(ep.Addr) {
		o.Metrics.Ejections.WithLabelValues(o.Source, o.Service).Inc()
		o.Logger.Warn("endpoint ejected after consecutive errors", "upstream", o.Service, "endpointInstance", ep.Instance, "errors", balance.ConsecutiveErrors)
	}
}

// takeRetry is the retry budget: retries in flight may be at most a fifth
// of the requests in flight (and at least 3), so that when an upstream
// fails outright, retries cannot multiply the load on it.
func (o *Outbound) takeRetry() bool {
	limit := max(o.active.Load()/5, 3)
	if o.retrying.Add(1) > limit {
		o.retrying.Add(-1)
		o.Metrics.BudgetExhausted.WithLabelValues(o.Source, o.Service).Inc()
		return false
	}
	return true
}

// retryStatus reports whether resp is a failure the policy retries.
func (p *Retry) retryStatus(resp *response) bool {
	if p == nil {
		return false
	}
	c := resp.status
	switch {
	case p.on["5xx"] && c >= 500:
		return true
	case p.on["gateway-error"] && (c == 502 || c == 503 || c == 504):
		return true
	case p.on["retriable-grpc"]:
		switch resp.get("grpc-status") {
		case "14", "8": // UNAVAILABLE, RESOURCE_EXHAUSTED
			return true
		}
	}
	return false
}

// retryError reports whether a failed attempt is one the policy retries.
func (p *Retry) retryError(err error, perTryExpired bool) bool {
	if p == nil {
		return false
	}
	var de *dialError
	switch {
	case errors.As(err, &de):
		return p.on["connect-failure"] || p.on["5xx"] || p.on["gateway-error"]
	case perTryExpired:
		return p.on["5xx"] || p.on["gateway-error"] // the per-try timeout
	default:
		return p.on["reset"] || p.on["5xx"]
	}
}

// replayable reports whether req's body can be sent again, reading a small
// one into memory to make it so.
func replayable(req *request) bool {
	if req.in == nil {
		req.getBody = noBodyAgain
		return true
	}
	if req.length <= 0 || req.length > maxReplayBody {
		return false
	}
	b, err := io.ReadAll(io.LimitReader(req.in, maxReplayBody+1))
	req.in.Close()
	if err != nil || int64(len(b)) != req.length {
		req.in = io.NopCloser(bytes.NewReader(b))
		return false
	}
	req.in = io.NopCloser(bytes.NewReader(b))
	req.getBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	return true
}

// noBodyAgain is a bodiless request's getBody: no body again.
func noBodyAgain() (io.ReadCloser, error) { return nil, nil }

// trackedBody ends an attempt that answered (done) once, when its
// response body is closed or read to the end.
type trackedBody struct {
	io.ReadCloser
	once sync.Once

	o                 *Outbound
	req               *request
	rule              *Rule
	ep                balance.Endpoint
	code, attempt     int
	start             time.Time
	sp                *tracing.Span
	holdsSlot         bool // of the circuit breaker
	tryCancel, cancel context.CancelFunc
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.once.Do(b.done)
	}
	return n, err
}

func (b *trackedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

func (b *trackedBody) done() {
	o := b.o
	if b.holdsSlot {
		o.limit.release()
	}
	b.tryCancel()
	b.cancel()
	o.bal.Done(b.ep.Key())
	o.Metrics.observe("outbound", o.Source, o.Service, b.rule.Name, b.ep.Version, b.code, b.start)
	b.sp.End(b.rule.Name, b.ep.Version, b.code, b.attempt)
	o.access(b.req, b.rule.Name, b.ep, b.code, b.attempt, b.start)
}
