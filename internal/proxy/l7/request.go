package l7

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/httpmatch"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/h1"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/tracing"
)

// The inbound's fields path. A request stream from a caller's sidecar
// whose app speaks HTTP/1.1 is checked, authorized and written to the app
// from its HTTP/2 fields as they came: no http.Request, url.URL or
// http.Header is made for it, and no map is hashed (each cost about a
// tenth of the inbound's time per request). Every step does what its
// http.Request counterpart does for the other paths (streamRequest,
// sanitizeWithin, admit, prepareRequest, holdBody, h1's writeBodiless);
// FuzzInboundFieldsPath holds the two to the same results, request by
// request, for as long as both exist. Requests the path does not take (a
// body that streams or has trailers, an HTTP/2 app) go the http.Request
// way.
//
// The outbound's fields path (the end of this file) serves an HTTP/2
// client's request stream the same way, and an HTTP/1.1 client's request
// once checked as an http.Request: routing, retries and sending are one
// code for both (Outbound.roundTrip, sendRequest). FuzzOutboundFieldsPath
// holds its streams to the http.Request way's results.

// request is a request on the fields path: a request stream's, or (on the
// outbound) an HTTP/1.1 client's once checked (fromHTTP).
type request struct {
	ctx       context.Context
	method    string
	authority string // canonical once checked
	target    string // :path as sent
	path      string // normalized and percent-decoded, once checked: what rules see
	escaped   string // normalized, escaped: what the app gets before the query
	query     string
	hasQuery  bool // the target had a '?' (perhaps with an empty query)
	fields    []hpack.HeaderField
	length    int64 // content-length, -1 if none
	body      []byte
	bad       *badRequest // a stream that makes no request
	s         *tunnel.Stream
	match     httpmatch.Request

	// The outbound's: the body to send on (nil: none), how to have it
	// again for a retry, the trailers it declared (canonical names), the
	// trailers that came once it was read to its end, and whether it is
	// an HTTP/1.1 body of unknown length (read ahead, see sendRequest).
	in io.ReadCloser
	// wire, when set, is the array that fields started in, four places
	// before them kept for the pseudo-header fields: while fields still
	// follow them, sendRequest sends the head from it without a copy.
	wire         []hpack.HeaderField
	getBody      func() (io.ReadCloser, error)
	trailerNames []string
	trailers     func() []hpack.HeaderField
	readAhead    bool
	// fromH1 marks an HTTP/1.1 client's request (Outbound.ServeHead):
	// its cookie fields are separate fields, as in its http.Request.
	fromH1 bool
	// Outbound.roundTrip's: whether the route's timeout fired, and what
	// ends with the response body. Here rather than each an allocation
	// of its own.
	timedOut atomic.Bool
	tracked  trackedBody
}

// fieldsEligible reports whether the request on s can take the fields
// path: no body, or one of known length that is held whole (see holdBody),
// and no trailers declared.
func fieldsEligible(s *tunnel.Stream) bool {
	length := int64(-1)
	for _, f := range s.Fields {
		switch f.Name {
		case "content-length":
			if length >= 0 {
				continue // the first one counts, as http.Header.Get reads it
			}
			n, err := strconv.ParseInt(f.Value, 10, 64)
			if err != nil || n < 0 {
				return true // malformed: refused on the fields path
			}
			length = n
		case "trailer":
			return false
		}
	}
	if s.Drained() {
		return true
	}
	return length > 0 && length <= maxHeldBody
}

// readStreamRequest makes the request of stream s, as streamRequest does,
// in r; a stream that makes no request sets r.bad.
func readStreamRequest(r *request, s *tunnel.Stream, ctx *streamContext) {
	*r = request{ctx: ctx, s: s, method: s.Method, authority: s.Authority, target: s.Path, length: -1}
	r.fields = s.Fields
	if err := r.fromStream(); err != nil {
		r.bad = &badRequest{http.StatusBadRequest, "trellis: bad request: " + err.Error(), ReasonStream}
	}
	s.OnStop(ctx.cancel)
}

func (r *request) fromStream() error {
	if !(r.target == "*" && r.method == http.MethodOptions) && !strings.HasPrefix(r.target, "/") {
		return errors.New(":path is not an absolute path")
	}
	// What url.ParseRequestURI refuses: a control character anywhere, a
	// malformed percent-encoding in the path.
	for i := 0; i < len(r.target); i++ {
		if c := r.target[i]; c < ' ' || c == 0x7f {
			return errors.New("a control character in :path")
		}
	}
	raw, _, _ := strings.Cut(r.target, "?")
	for i := strings.IndexByte(raw, '%'); i >= 0; i = strings.IndexByte(raw, '%') {
		if i+2 >= len(raw) || unhex(raw[i+1]) < 0 || unhex(raw[i+2]) < 0 {
			return errors.New("a malformed percent-encoding in :path")
		}
		raw = raw[i+3:]
	}
	// The stream's fields are this request's alone: checks below edit
	// them in place.
	hosts, host := 0, ""
	cl := ""
	for _, f := range r.fields {
		switch {
		case connectionHeaders[f.Name]:
			return errors.New("connection-specific header field " + canonicalNames.get(f.Name))
		case f.Name == "host":
			if hosts++; hosts == 1 {
				host = f.Value
			}
		case f.Name == "content-length" && cl == "":
			cl = f.Value
		}
	}
	if hosts > 1 || hosts == 1 && r.authority != "" && host != r.authority {
		return errors.New("Host fields that disagree with :authority or each other")
	}
	if r.authority == "" {
		r.authority = host
	}
	if hosts > 0 {
		r.fields = deleteFields(r.fields, func(name string) bool { return name == "host" })
	}
	if cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 {
			return errors.New("invalid content-length")
		}
		r.length = n
	}
	return nil
}

// get is the first value of the field named name (lowercase), as
// http.Header.Get reads one.
func (r *request) get(name string) string {
	for _, f := range r.fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// check is sanitizeWithin on the fields path: the same checks, the same
// refusals, the path normalized into r.path and r.escaped.
func (r *request) check(lim headLimits) *badRequest {
	if r.bad != nil {
		return r.bad
	}
	// Counted as sanitizeWithin counts http.Header: several cookie
	// fields are one there, joined with "; "; and the target as the app
	// would get it, escaped anew (uriLen), not as sent.
	n, size, cookies := 0, uriLen(r.target)+len(r.authority), 0
	for _, f := range r.fields {
		if f.Name == "cookie" && !r.fromH1 {
			if cookies++; cookies > 1 {
				size += len(f.Value) + 2
				continue
			}
		}
		n++
		size += len(f.Name) + len(f.Value) + 4
	}
	if n > lim.fields {
		return &badRequest{http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("trellis: more than %d header fields", lim.fields), ReasonHeaders}
	}
	if size > lim.bytes {
		return &badRequest{http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("trellis: request head (target, host and fields) over %d KiB", lim.bytes>>10), ReasonHeaders}
	}
	if err := checkMethod(r.method); err != nil {
		return err
	}
	for i := 0; i < len(r.target); i++ {
		if c := r.target[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return &badRequest{http.StatusBadRequest, "trellis: a fragment, white space, control or non-ASCII character in the request target", ReasonTarget}
		}
	}
	canon, _, err := httpmatch.CanonicalAuthority(r.authority)
	if err != nil {
		return &badRequest{http.StatusBadRequest, "trellis: malformed host: " + err.Error(), ReasonHost}
	}
	r.authority = canon
	// checkH2C's other case, an upgrade to h2c, cannot come: an Upgrade
	// field is connection-specific, refused by fromStream.
	for _, f := range r.fields {
		if f.Name == "http2-settings" {
			return &badRequest{http.StatusBadRequest, "trellis: HTTP2-Settings is not accepted (no upgrade to h2c)", ReasonH2C}
		}
	}
	raw, query, hasQuery := strings.Cut(r.target, "?")
	r.query, r.hasQuery = query, hasQuery
	if r.target == "*" {
		r.path, r.escaped = "*", "*"
		return nil
	}
	p, err := NormalizePath(raw)
	if err != nil {
		return &badRequest{http.StatusBadRequest, "trellis: " + err.Error(), ReasonPath}
	}
	dec := p
	if strings.IndexByte(p, '%') >= 0 {
		if dec, err = url.PathUnescape(p); err != nil {
			return &badRequest{http.StatusBadRequest, "trellis: " + err.Error(), ReasonPath}
		}
	}
	if !utf8.ValidString(dec) {
		return &badRequest{http.StatusBadRequest, "trellis: the path, percent-decoded, is not valid UTF-8", ReasonPath}
	}
	r.path, r.escaped = dec, escapePath(p)
	return nil
}

// uriLen is the length of url.URL's RequestURI for the url.URL that
// url.ParseRequestURI makes of a target (one fromStream accepted): what
// sanitizeWithin counts of it toward the head limits. A path holding a
// character url.URL does not keep as sent (such as '|', a space or '#')
// is escaped anew, each such character in three bytes: counted as sent,
// a head refused with 431 on the http.Request way would reach the app.
func uriLen(target string) int {
	raw, _, _ := strings.Cut(target, "?")
	for i := 0; i < len(raw); i++ {
		if !keptInPath(raw[i]) {
			dec, err := url.PathUnescape(raw)
			if err != nil {
				return len(target) // refused by fromStream
			}
			u := url.URL{Path: dec}
			return len(u.EscapedPath()) + len(target) - len(raw)
		}
	}
	return len(target)
}

// logPath is the path the http.Request way logs for the request: the
// normalized one once checked, else the path as url.URL reads it
// (percent-decoded, without the query, which may carry a secret), and
// none for a stream that made no request.
func (r *request) logPath() string {
	switch {
	case r.bad != nil:
		return ""
	case r.path != "":
		return r.path
	}
	raw, _, _ := strings.Cut(r.target, "?")
	if dec, err := url.PathUnescape(raw); err == nil {
		return dec
	}
	return raw
}

// mayBeForm is mayBeForm (sanitize.go) on the fields path.
func (r *request) mayBeForm() bool {
	if r.method != http.MethodPost {
		return false
	}
	seen := false
	for _, f := range r.fields {
		if f.Name != "content-type" {
			continue
		}
		seen = true
		mt, _, _ := strings.Cut(f.Value, ";")
		mt = strings.ToLower(textproto.TrimString(mt))
		if mt == "application/x-www-form-urlencoded" || mt == "multipart/form-data" || mt == "" {
			return true
		}
	}
	return !seen && r.length != 0
}

// admit is Inbound.admit on the fields path.
func (in *Inbound) admitFields(r *request, peer identity.ID) *badRequest {
	if err := r.check(meshLimits); err != nil {
		return err
	}
	if d := in.Authorize(peer, r.matchRequest()); !d.Allow {
		return &badRequest{http.StatusForbidden, deniedPrefix + d.Reason, d.Code}
	}
	dropped := 0
	r.fields = deleteFields(r.fields, func(name string) bool {
		if strings.IndexByte(name, '_') >= 0 {
			dropped++
			return true
		}
		return isInternalField(name) // PeerHeader among them
	})
	if dropped > 0 {
		in.Metrics.DroppedFields.WithLabelValues("inbound", "underscore").Add(float64(dropped))
	}
	if !peer.IsZero() {
		r.fields = append(r.fields, hpack.HeaderField{Name: "x-forwarded-client-cert", Value: in.peerValue(peer)})
	}
	return nil
}

// prepare is prepareRequest on the fields path, for a request stream
// (which carries no Connection or Upgrade field: refused as malformed)
// or an HTTP/1.1 client's request without an Upgrade field.
func (r *request) prepare() {
	trailers := false
	hop := false
	// The fields a connection field names are this hop's too
	// (removeHopByHop, which deletes them by their canonical name: a
	// name that is no token names nothing). The hop-by-hop ones go
	// below, once TE was read.
	var named []string
	for _, f := range r.fields {
		if f.Name != "connection" {
			continue
		}
		for name := range strings.SplitSeq(f.Value, ",") {
			if name = textproto.TrimString(name); httpguts.ValidHeaderFieldName(name) {
				if name = strings.ToLower(name); !isHopField(name) {
					named = append(named, name)
				}
			}
		}
	}
	if len(named) > 0 {
		r.fields = deleteFields(r.fields, func(n string) bool { return slices.Contains(named, n) })
	}
	for _, f := range r.fields {
		if isHopField(f.Name) {
			hop = true
			if f.Name == "te" && httpguts.HeaderValuesContainsToken([]string{f.Value}, "trailers") {
				trailers = true
			}
		}
	}
	if hop {
		r.fields = deleteFields(r.fields, isHopField)
	}
	if trailers {
		r.fields = append(r.fields, hpack.HeaderField{Name: "te", Value: "trailers"})
	}
	if r.query != "" {
		if _, err := url.ParseQuery(r.query); err != nil {
			v, _ := url.ParseQuery(r.query)
			r.query = v.Encode()
			r.hasQuery = r.query != ""
		}
	}
}

// isHopField reports whether a lowercase name is one of hopHeaders.
func isHopField(name string) bool {
	switch name {
	case "connection", "proxy-connection", "keep-alive", "proxy-authenticate",
		"proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade":
		return true
	}
	return false
}

// serveFields is Inbound.serve on the fields path.
func (in *Inbound) serveFields(x *fieldsExchange, peer identity.ID) {
	start := time.Now()
	r, sw := &x.r, &x.sw
	sw.ResponseWriter = &x.w
	var sp *tracing.Span
	if in.Tracer != nil {
		tp, ts := r.traceContext()
		sp = in.Tracer.StartServerFrom(tp, ts, r.method, peer.Service(), in.Self().Service())
	}
	if bad := in.admitFields(r, peer); bad != nil {
		in.Metrics.refusedRequest(in.Logger, r.ctx, r.method, r.logPath(), r.authority, "inbound", peer.Service(), in.Self().Service(), bad)
		refuse(sw, bad)
	} else {
		r.inject(sp)
		in.proxyFields(sw, r, &x.head)
	}
	in.Metrics.observe("inbound", peer.Service(), in.Self().Service(), "", "", sw.status(), start)
	sp.End("", "", sw.status(), 0)
	if in.Logger.Enabled(r.ctx, slog.LevelInfo) {
		in.Logger.LogAttrs(r.ctx, slog.LevelInfo, "access",
			slog.String("direction", "inbound"), slog.String("requestId", r.get("x-request-id")),
			slog.String("method", r.method), slog.String("path", r.logPath()), slog.String("source", peer.String()),
			slog.Int("status", sw.status()), slog.Duration("duration", time.Since(start)))
	}
}

// proxyFields is Inbound.proxy on the fields path.
func (in *Inbound) proxyFields(w http.ResponseWriter, r *request, head *h1.Head) {
	r.prepare()
	if r.length > 0 {
		// Held whole before the app sees the head (holdBody).
		b := make([]byte, r.length)
		_, err := io.ReadFull(r.s, b)
		if err == nil {
			err = readEnd(r.s, r.length)
		}
		if err != nil {
			if r.ctx.Err() == nil {
				in.Logger.Debug("request body failed before it reached the app", "err", err)
				abortResponse(w)
			}
			return
		}
		r.body = b
	}
	host := r.authority
	if host == "" {
		host = in.Target // what net/http's writer puts there: the URL's host
	}
	*head = h1.Head{Method: r.method, Target: r.requestURI(), Host: host, Fields: r.fields, Body: r.body}
	fr, resp, err := in.app.RoundTripHead(r.ctx, head)
	in.relay(w, r.ctx, fr, resp, err)
}

// readEnd reads the end of a body whose length bytes were read: it must
// end there.
func readEnd(body io.Reader, length int64) error {
	var one [1]byte
	for range 100 {
		n, err := body.Read(one[:])
		switch {
		case n > 0:
			return fmt.Errorf("body longer than its content-length %d", length)
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		}
	}
	return io.ErrNoProgress
}

// The outbound's fields path: an HTTP/2 client's request stream (no TLS)
// is checked, routed and sent on from its fields; an HTTP/1.1 client's
// request is checked as an http.Request and then made a request by
// fromHTTP, so that routing and sending are the same for both.

// fromHTTP makes r, a checked request of an HTTP/1.1 client (or of the
// ingress), a request in x.
func fromHTTP(x *request, r *http.Request) {
	*x = request{ctx: r.Context(), method: r.Method, authority: r.Host, path: r.URL.Path, escaped: r.URL.EscapedPath(),
		query: r.URL.RawQuery, hasQuery: r.URL.ForceQuery || r.URL.RawQuery != "", length: r.ContentLength,
		getBody: r.GetBody, readAhead: r.ProtoMajor == 1}
	x.target = x.escaped
	// Room for the pseudo-header fields before, and after for the fields
	// the proxy adds on the way (request ID, trace context,
	// content-length, trailer).
	x.wire = make([]hpack.HeaderField, 4, 4+len(r.Header)+4)
	x.fields = appendFields(x.wire[4:], r.Header, nil)
	if !noBody(r) {
		x.in = r.Body
	}
	if len(r.Trailer) > 0 {
		x.trailerNames = make([]string, 0, len(r.Trailer))
		for k := range r.Trailer {
			x.trailerNames = append(x.trailerNames, k)
		}
		x.trailers = func() []hpack.HeaderField { return appendFields(nil, r.Trailer, nil) }
	}
}

// readOutboundStream makes the request of stream s, an HTTP/2 client's,
// in x, its body streaming from s.
func readOutboundStream(x *request, s *tunnel.Stream, ctx *streamContext) {
	readStreamRequest(x, s, ctx)
	if x.bad != nil {
		return
	}
	for _, f := range x.fields {
		if f.Name != "trailer" {
			continue
		}
		for name := range strings.SplitSeq(f.Value, ",") {
			if k := canonicalNames.get(strings.TrimSpace(name)); k != "" && !meshTrailer(k) && !slices.Contains(x.trailerNames, k) {
				x.trailerNames = append(x.trailerNames, k)
			}
		}
	}
	if s.Drained() && len(x.trailerNames) == 0 {
		x.length = 0
		return
	}
	x.in = &streamBody{s: s}
	x.trailers = func() []hpack.HeaderField { return streamTrailers(s) }
}

// streamTrailers are the trailers that came on s, less those the proxies
// set (they come in the head only) and those HTTP/2 does not carry.
func streamTrailers(s *tunnel.Stream) []hpack.HeaderField {
	var out []hpack.HeaderField
	for _, f := range s.Trailers() {
		if meshTrailer(f.Name) || connectionHeaders[f.Name] || f.Name == "host" || f.Name == "te" && f.Value != "trailers" {
			continue
		}
		out = append(out, f)
	}
	return out
}

// dropMeshUnderscored removes the fields whose names, '_' read as '-',
// are ones the proxies set, strip or frame by (DropUnderscoreFields with
// meshOnly) and counts them.
func (o *Outbound) dropMeshUnderscored(r *request) {
	n := 0
	r.fields = deleteFields(r.fields, func(name string) bool {
		if strings.IndexByte(name, '_') < 0 || !meshFields[strings.ReplaceAll(name, "_", "-")] {
			return false
		}
		n++
		return true
	})
	if n > 0 {
		o.Metrics.DroppedFields.WithLabelValues("outbound", "underscore").Add(float64(n))
	}
}

// setContext is setRequestContext on the fields path: a request ID when
// there is none, and a trace context whose parent is this hop.
func (r *request) setContext() {
	r.setRequestID()
	r.set("traceparent", nextTraceparent(r.get("traceparent")))
}

// setRequestID gives r a request ID if it has none (setRequestID).
func (r *request) setRequestID() {
	if r.get("x-request-id") == "" {
		r.set("x-request-id", newRequestID())
	}
}

// set replaces the fields named name (lowercase) with one of value.
func (r *request) set(name, value string) {
	r.fields = deleteFields(r.fields, func(n string) bool { return n == name })
	r.fields = append(r.fields, hpack.HeaderField{Name: name, Value: value})
}

// values are the values of the fields named name (lowercase), in order.
func (r *request) values(name string) []string {
	var vs []string
	for _, f := range r.fields {
		if f.Name == name {
			vs = append(vs, f.Value)
		}
	}
	return vs
}

// traceContext is the request's traceparent (its first) and tracestate
// values, which a span starts from: none for a stream that made no
// request, as the http.Request way has none then.
func (r *request) traceContext() (string, []string) {
	if r.bad != nil {
		return "", nil
	}
	return r.get("traceparent"), r.values("tracestate")
}

// inject sets r's trace context to sp's, as Span.Inject does.
func (r *request) inject(sp *tracing.Span) {
	if sp == nil {
		return
	}
	r.fields = deleteFields(r.fields, func(n string) bool { return n == "tracestate" })
	r.set("traceparent", sp.Traceparent())
	if ts := sp.Tracestate(); ts != "" {
		r.fields = append(r.fields, hpack.HeaderField{Name: "tracestate", Value: ts})
	}
}

// matchRequest is what rules see of r, made once.
func (r *request) matchRequest() *httpmatch.Request {
	r.match = httpmatch.Request{Method: r.method, Path: r.path, Host: matchHost(r.authority), Fields: r.fields,
		Query: r.query, Form: r.mayBeForm()}
	if r.match.Fields == nil {
		r.match.Fields = []hpack.HeaderField{} // a list, though empty: not the header map
	}
	return &r.match
}

// wireHead is the header list to send: the pseudo-header fields, then
// fields, with room for n more.
func (r *request) wireHead(n int) []hpack.HeaderField {
	var h []hpack.HeaderField
	if len(r.wire) == 4 && cap(r.fields) > 0 && &r.wire[:5][4] == &r.fields[:1][0] {
		h = r.wire[:4+len(r.fields)] // the fields are where they started
	} else {
		h = make([]hpack.HeaderField, 4, 4+len(r.fields)+n)
		h = append(h, r.fields...)
	}
	h[0] = hpack.HeaderField{Name: ":method", Value: r.method}
	h[1] = hpack.HeaderField{Name: ":scheme", Value: "http"}
	h[2] = hpack.HeaderField{Name: ":authority", Value: r.authority}
	h[3] = hpack.HeaderField{Name: ":path", Value: r.requestURI()}
	return h
}

// requestURI is the target to send: the escaped path and the query.
func (r *request) requestURI() string {
	if r.hasQuery {
		return r.escaped + "?" + r.query
	}
	return r.escaped
}
