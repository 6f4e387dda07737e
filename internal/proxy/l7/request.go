package l7

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/httpmatch"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/h1"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
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
// body that streams or has trailers, tracing on, an HTTP/2 app) go the
// http.Request way.

// request is a request stream's request on the fields path.
type request struct {
	ctx       *streamContext
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
	head      h1.Head // what the app client sends
	match     httpmatch.Request
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
	if r.s.Drained() {
		r.length = 0
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
		if f.Name == "cookie" {
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
	for _, f := range r.fields {
		switch f.Name {
		case "http2-settings":
			return &badRequest{http.StatusBadRequest, "trellis: HTTP2-Settings is not accepted (no upgrade to h2c)", ReasonH2C}
		case "upgrade":
			// Refused as a connection-specific field already; checked
			// here too, as checkH2C does, should that ever change.
			if bad := checkH2C(http.Header{"Upgrade": {f.Value}}); bad != nil {
				return bad
			}
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
	r.match = httpmatch.Request{Method: r.method, Path: r.path, Host: matchHost(r.authority), Fields: r.fields,
		Query: r.query, Form: r.mayBeForm()}
	if r.match.Fields == nil {
		r.match.Fields = []hpack.HeaderField{} // a list, though empty: not the header map
	}
	if d := in.Authorize(peer, &r.match); !d.Allow {
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
// (which carries no Connection or Upgrade field: refused as malformed).
func (r *request) prepare() {
	trailers := false
	hop := false
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
	if bad := in.admitFields(r, peer); bad != nil {
		in.Metrics.refusedRequest(in.Logger, r.ctx, r.method, r.logPath(), r.authority, "inbound", peer.Service(), in.Self().Service(), bad)
		refuse(sw, bad)
	} else {
		in.proxyFields(sw, r)
	}
	in.Metrics.observe("inbound", peer.Service(), in.Self().Service(), "", "", sw.status(), start)
	if in.Logger.Enabled(r.ctx, slog.LevelInfo) {
		in.Logger.LogAttrs(r.ctx, slog.LevelInfo, "access",
			slog.String("direction", "inbound"), slog.String("requestId", r.get("x-request-id")),
			slog.String("method", r.method), slog.String("path", r.logPath()), slog.String("source", peer.String()),
			slog.Int("status", sw.status()), slog.Duration("duration", time.Since(start)))
	}
}

// proxyFields is Inbound.proxy on the fields path.
func (in *Inbound) proxyFields(w http.ResponseWriter, r *request) {
	r.prepare()
	if r.length > 0 {
		// Held whole before the app sees the head (holdBody).
		b := make([]byte, r.length)
		if _, err := io.ReadFull(r.s, b); err != nil || !r.drained() {
			if r.ctx.Err() == nil {
				in.Logger.Debug("request body failed before it reached the app", "err", bodyError(err, r.length))
				abortResponse(w)
			}
			return
		}
		r.body = b
	}
	target := r.escaped
	if r.hasQuery {
		target += "?" + r.query
	}
	host := r.authority
	if host == "" {
		// As the http.Request way: a request with no Host names the
		// app's address (req.Write's URL.Host).
		host = in.Target
	}
	r.head = h1.Head{Method: r.method, Target: target, Host: host, Fields: r.fields, Body: r.body}
	fr, resp, err := in.app.RoundTripHead(r.ctx, &r.head)
	if err != nil {
		if r.ctx.Err() != nil {
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

// drained reports whether the body ended where its length said: one
// more read finds its end and nothing else.
func (r *request) drained() bool {
	var one [1]byte
	n, err := r.s.Read(one[:])
	return n == 0 && err == io.EOF
}

func bodyError(err error, length int64) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("body longer than its content-length %d", length)
}
