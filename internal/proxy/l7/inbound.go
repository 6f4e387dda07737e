package l7

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/httpmatch"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/h1"
	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/tracing"
)

// Inbound serves HTTP/2 connections from other sidecars and forwards each
// authorized request to the app, in the protocol the app speaks.
type Inbound struct {
	// Self returns this proxy's identity, named in PeerHeader.
	Self func() identity.ID
	// Authorize decides per request, from the caller's verified identity
	// and the request (its path normalized).
	Authorize func(peer identity.ID, r *httpmatch.Request) authz.Decision
	// Target is the app's address, such as 127.0.0.1:8080.
	Target string
	// Protocol returns how the app speaks now: http (HTTP/1.1), or http2
	// and grpc (HTTP/2 without TLS).
	Protocol func() string
	// EdgeTrustedProxies returns the hops in front of the edge listener
	// whose forwarding fields ServeEdge keeps and appends to; nil, or a
	// nil result, trusts none.
	EdgeTrustedProxies func() []netip.Prefix
	// Logger; nil discards.
	Logger *slog.Logger
	// Metrics; nil means unregistered ones.
	Metrics *Metrics
	// Tracer, when set, gives each request a server span, which the
	// traceparent the app gets then names; nil traces nothing.
	Tracer *tracing.Tracer

	once     sync.Once
	mu       sync.Mutex
	conns    map[*tunnel.Conn]struct{}
	draining bool
	app      *h1.Client // to the app over HTTP/1.1
	h2c      *http2.Transport
	plain    *Server
	edge     *Server
	inflight atomic.Int64
	by       atomic.Pointer[peerPrefix]
	// httpOnly serves every request stream the http.Request way: the
	// reference the fields path is tested against.
	httpOnly bool
}

// peerPrefix is PeerHeader's value up to the caller's ID, for one Self,
// and the whole value for the last caller.
type peerPrefix struct {
	self identity.ID
	s    string
	last atomic.Pointer[peerHeader]
}

// peerHeader is PeerHeader's value for one caller.
type peerHeader struct {
	peer  identity.ID
	value string
}

// peerValue is PeerHeader's value for a request from peer: the part
// naming this proxy is the same on every request and made once, and the
// whole value is made again only when the caller is another than the
// last one's (an inbound serves a few callers, their requests in runs).
func (in *Inbound) peerValue(peer identity.ID) string {
	self := in.Self()
	p := in.by.Load()
	if p == nil || p.self != self {
		p = &peerPrefix{self: self, s: "By=" + self.String() + ";URI="}
		in.by.Store(p)
	}
	if h := p.last.Load(); h != nil && h.peer == peer {
		return h.value
	}
	h := &peerHeader{peer, p.s + peer.String()}
	p.last.Store(h)
	return h.value
}

func (in *Inbound) init() {
	in.once.Do(func() {
		if in.Logger == nil {
			in.Logger = slog.New(slog.DiscardHandler)
		}
		if in.Metrics == nil {
			in.Metrics = NewMetrics(nil)
		}
		in.conns = map[*tunnel.Conn]struct{}{}
		dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}
		in.app = &h1.Client{Target: in.Target, MaxIdle: 256, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return netconn.Raw(c), nil
		}}
		in.plain = NewServer(http.HandlerFunc(in.servePlain), in.Logger)
		in.edge = NewServer(http.HandlerFunc(in.serveEdge), in.Logger)
		in.plain.Rejected, in.edge.Rejected = in.Metrics.Rejected, in.Metrics.Rejected
		in.h2c = &http2.Transport{
			AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				return dialer.DialContext(ctx, network, addr)
			},
		}
	})
}

// ServeConn serves one HTTP/2 connection (TLS done, ALPN h2) from peer
// until it ends. (Sidecars reach ServeStream through the tunnel instead.)
func (in *Inbound) ServeConn(c net.Conn, peer identity.ID) {
	in.init()
	tun := tunnel.NewServer(c, tunnel.Config{Requests: true, MaxHeaderBytes: TunnelHeaderBytes, Logger: in.Logger},
		func(s *tunnel.Stream) { in.ServeStream(s, peer) })
	in.mu.Lock()
	if in.draining {
		in.mu.Unlock()
		c.Close()
		return
	}
	in.conns[tun] = struct{}{}
	in.mu.Unlock()
	tun.Run()
	in.mu.Lock()
	delete(in.conns, tun)
	in.mu.Unlock()
}

func noBody(req *http.Request) bool { return req.Body == nil || req.Body == http.NoBody }

// holdBody reads a small body of known length whole before the app sees
// the request's head, and gives it to the request from memory: a body
// that breaks its framing (a content-length it does not match, a reset
// stream) then reaches the app not at all, instead of as a head and an
// incomplete body; and the request leaves in one write. The body of a
// caller's sidecar arrives with its head, so this waits for nothing.
func holdBody(r *http.Request) error {
	if noBody(r) || r.ContentLength <= 0 || r.ContentLength > maxHeldBody || len(r.Trailer) > 0 {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, r.ContentLength+1))
	if err != nil {
		return err
	}
	if int64(len(b)) != r.ContentLength {
		return fmt.Errorf("body of %d bytes, content-length %d", len(b), r.ContentLength)
	}
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	return nil
}

// TunnelHeaderBytes is the header list size a tunnel connection that
// carries requests accepts: the inbound's limits (a client's and the room
// the mesh keeps for itself), the 32 bytes per field that HTTP/2 counts
// (RFC 9113 section 6.5.2) and the four pseudo-header fields.
const TunnelHeaderBytes = MaxHeaderBytes + MeshHeaderBytes + (MaxHeaderFields+MeshHeaderFields+4)*32

// ServeStream serves one request stream from peer.
func (in *Inbound) ServeStream(s *tunnel.Stream, peer identity.ID) {
	in.init()
	in.inflight.Add(1)
	defer in.inflight.Add(-1)
	if in.fieldsPath() && fieldsEligible(s) {
		x := &fieldsExchange{} // one allocation for the writer and the request
		x.w.s = s
		readStreamRequest(&x.r, s, &x.w.ctx)
		if s.Drained() {
			x.r.length = 0
		}
		defer x.w.ctx.cancel()
		in.serveFields(x, peer)
		x.w.finish()
		return
	}
	serveRequest(s, func(w http.ResponseWriter, r *http.Request) { in.serve(w, r, peer) })
}

// fieldsExchange is a request stream's request and response writer on
// the fields path (request.go).
type fieldsExchange struct {
	w    streamWriter
	sw   statusWriter
	r    request
	head h1.Head // what the inbound's app client sends
}

// fieldsPath reports whether request streams may take the fields path:
// the app speaks HTTP/1.1.
func (in *Inbound) fieldsPath() bool {
	if in.httpOnly {
		return false
	}
	p := in.Protocol()
	return p != v1.ProtocolHTTP2 && p != v1.ProtocolGRPC
}

func (in *Inbound) serve(w http.ResponseWriter, r *http.Request, peer identity.ID) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	var sp *tracing.Span
	if in.Tracer != nil {
		sp = in.Tracer.StartServer(r.Header, r.Method, peer.Service(), in.Self().Service())
	}
	if bad := in.admit(r, peer); bad != nil {
		in.Metrics.refused(in.Logger, r, "inbound", peer.Service(), in.Self().Service(), bad)
		refuse(sw, bad)
	} else {
		sp.Inject(r.Header)
		in.proxy(sw, r)
	}
	in.Metrics.observe("inbound", peer.Service(), in.Self().Service(), "", "", sw.status(), start)
	sp.End("", "", sw.status(), 0)
	if in.Logger.Enabled(r.Context(), slog.LevelInfo) {
		in.Logger.LogAttrs(r.Context(), slog.LevelInfo, "access",
			slog.String("direction", "inbound"), slog.String("requestId", r.Header.Get(RequestIDHeader)),
			slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.String("source", peer.String()),
			slog.Int("status", sw.status()), slog.Duration("duration", time.Since(start)))
	}
}

// proxy sends an admitted request to the app and its answer back.
func (in *Inbound) proxy(w http.ResponseWriter, r *http.Request) {
	if _, err := prepareRequest(r); err != nil {
		refuse(w, &badRequest{http.StatusBadRequest, "trellis: " + err.Error(), ReasonStream})
		return
	}
	if _, ok := r.Header["User-Agent"]; !ok {
		r.Header["User-Agent"] = []string{""} // not Go's default
	}
	r.URL.Scheme, r.URL.Host, r.RequestURI = "http", in.Target, ""
	if err := holdBody(r); err != nil {
		if r.Context().Err() == nil {
			in.Logger.Debug("request body failed before it reached the app", "err", err)
			abortResponse(w)
		}
		return
	}
	var resp *http.Response
	var fr *h1.Response
	var err error
	if p := in.Protocol(); p == v1.ProtocolHTTP2 || p == v1.ProtocolGRPC {
		resp, err = in.h2c.RoundTrip(r)
	} else {
		fr, resp, err = in.app.RoundTripFields(r)
	}
	in.relay(w, r.Context(), fr, resp, err)
}

// relay answers a request (its context ctx) with the app's response: fr,
// read the short way, or resp; or, when the call failed with err, 502.
func (in *Inbound) relay(w http.ResponseWriter, ctx context.Context, fr *h1.Response, resp *http.Response, err error) {
	if err != nil {
		if ctx.Err() != nil {
			return // the caller went away; its cancellation ended the call
		}
		in.Logger.Warn("app request failed", "target", in.Target, "err", err)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, "trellis: app unreachable\n")
		return
	}
	if fr != nil {
		writeResponse(w, appResponse(fr))
		return
	}
	writeResponse(w, httpResponse(resp))
}

// admit checks a request from peer (its head, then its authorization) and
// names the caller to the app; a refusal says what to answer.
func (in *Inbound) admit(r *http.Request, peer identity.ID) *badRequest {
	if err := sanitizeWithin(r, meshLimits); err != nil {
		// Our outbound sends clean requests; this caller did not.
		return err.(*badRequest)
	}
	if d := in.Authorize(peer, matchRequest(r)); !d.Allow {
		return &badRequest{http.StatusForbidden, deniedPrefix + d.Reason, d.Code}
	}
	// Rules saw the fields named with '_' as the ones named with '-' (a
	// deny on X-Role refuses X_Role: admin); the app sees none of them.
	in.Metrics.dropUnderscored(r, "inbound", false)
	stripInternal(r.Header) // PeerHeader among them
	if !peer.IsZero() {     // a plain caller is named to nobody
		r.Header[PeerHeader] = []string{in.peerValue(peer)}
	}
	return nil
}

// ServePlain serves a plain (no TLS) connection of a permissive mesh:
// HTTP/1.1 or h2c requests from a caller without an identity, each
// checked and authorized (as the unauthenticated caller) as an mTLS
// caller's are; the app gets no peer header at all, whatever the caller
// wrote. It returns when the connection ends.
func (in *Inbound) ServePlain(c net.Conn) {
	in.init()
	in.plain.RunConn(c)
}

func (in *Inbound) servePlain(w http.ResponseWriter, r *http.Request) {
	in.inflight.Add(1)
	defer in.inflight.Add(-1)
	if upgradeType(r.Header) == "" {
		in.serve(w, r, identity.ID{})
		return
	}
	// An upgrade takes the connection: the same path as an upgrade
	// stream's, which waits for the app's 101 before passing anything on.
	start := time.Now()
	if r.ContentLength != 0 {
		refuse(w, &badRequest{http.StatusBadRequest, "trellis: an upgrade request cannot have a body", ReasonStream})
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		refuse(w, &badRequest{http.StatusNotImplemented, "trellis: upgrades are not supported here", ReasonStream})
		return
	}
	defer conn.Close()
	code := in.upgrade(conn, brw.Reader, r, identity.ID{})
	in.Metrics.observe("inbound", "", in.Self().Service(), "", "", code, start)
}

// Drain sends GOAWAY on every connection and waits, until ctx ends, for
// the requests in flight.
func (in *Inbound) Drain(ctx context.Context) error {
	in.init()
	in.mu.Lock()
	in.draining = true
	for c := range in.conns {
		c.Shutdown()
	}
	in.mu.Unlock()
	in.plain.Shutdown(ctx) // plain callers' (permissive mode): idle ones close now
	in.edge.Shutdown(ctx)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for in.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain: %d requests still open: %w", in.inflight.Load(), ctx.Err())
		case <-t.C:
		}
	}
	in.app.CloseIdleConnections()
	return nil
}

// statusWriter remembers the status written; Unwrap lets the proxy flush.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 && code >= 200 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(p)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusWriter) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}

// ServeEdge serves a connection of the edge listener (TLS ended there)
// for an HTTP service: each request is checked as any other (sanitize,
// fields with '_' dropped), loses the peer header and every other field
// the mesh uses internally (an outside client has no mesh identity,
// whatever it wrote), and gets the forwarding fields of what the edge saw
// in place of its own (forwardFromEdge). The edge listener authorizes
// nothing: it is the service's public entrance. It returns when the
// connection ends.
func (in *Inbound) ServeEdge(c net.Conn) {
	in.init()
	in.edge.RunConn(c)
}

func (in *Inbound) serveEdge(w http.ResponseWriter, r *http.Request) {
	in.inflight.Add(1)
	defer in.inflight.Add(-1)
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	self := in.Self().Service()
	in.Metrics.dropUnderscored(r, "edge", false)
	if err := sanitize(r); err != nil {
		bad := err.(*badRequest)
		in.Metrics.refused(in.Logger, r, "edge", "", self, bad)
		refuse(sw, bad)
		in.Metrics.observe("edge", "", self, "", "", sw.status(), start)
		return
	}
	var trusted []netip.Prefix
	if in.EdgeTrustedProxies != nil {
		trusted = in.EdgeTrustedProxies()
	}
	// TLS always ends at the edge listener before a request gets here.
	forwardFromEdge(r, "https", trusted)
	if r.Header.Get(RequestIDHeader) == "" {
		r.Header.Set(RequestIDHeader, newRequestID())
	}
	if upgradeType(r.Header) == "" {
		var sp *tracing.Span
		if in.Tracer != nil {
			sp = in.Tracer.StartServer(r.Header, r.Method, "", self)
			sp.Inject(r.Header)
		}
		in.proxy(sw, r)
		in.Metrics.observe("edge", "", self, "", "", sw.status(), start)
		sp.End("", "", sw.status(), 0)
		return
	}
	if r.ContentLength != 0 {
		refuse(w, &badRequest{http.StatusBadRequest, "trellis: an upgrade request cannot have a body", ReasonStream})
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		refuse(w, &badRequest{http.StatusNotImplemented, "trellis: upgrades are not supported here", ReasonStream})
		return
	}
	defer conn.Close()
	code := in.switchProtocols(conn, brw.Reader, r)
	in.Metrics.observe("edge", "", self, "", "", code, start)
}
