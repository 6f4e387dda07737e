package l7

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
)

// Requests travel between sidecars as request streams of the pooled
// tunnel connection (package tunnel): this file turns an http.Request
// into a stream and back, and a stream into an http.ResponseWriter.

// connectionHeaders are the fields HTTP/2 forbids (RFC 9113 section
// 8.2.2): they describe one HTTP/1.1 connection, not the message.
var connectionHeaders = map[string]bool{
	"connection": true, "proxy-connection": true, "keep-alive": true,
	"transfer-encoding": true, "upgrade": true,
}

// nameCache maps header names from one spelling to another (canonical to
// lowercase, and back): the set of names a mesh sees is small, and
// converting allocates. It stops taking new names at maxCachedNames, so
// that clients sending made-up names cannot grow it without end.
type nameCache struct {
	m       sync.Map
	n       atomic.Int32
	convert func(string) string
}

const maxCachedNames = 1024

func (c *nameCache) get(k string) string {
	if v, ok := c.m.Load(k); ok {
		return v.(string)
	}
	v := c.convert(k)
	if len(k) <= 64 && c.n.Load() < maxCachedNames {
		if _, loaded := c.m.LoadOrStore(k, v); !loaded {
			c.n.Add(1)
		}
	}
	return v
}

var (
	lowerNames     = nameCache{convert: strings.ToLower}
	canonicalNames = nameCache{convert: textproto.CanonicalMIMEHeaderKey}
)

// lowerName is the HTTP/2 name of a canonical header key.
func lowerName(k string) string { return lowerNames.get(k) }

// appendFields appends h as HTTP/2 header fields, leaving out the
// connection-specific ones and those for which skip is true.
func appendFields(fields []hpack.HeaderField, h http.Header, skip func(string) bool) []hpack.HeaderField {
	for k, vv := range h {
		name := lowerName(k)
		if connectionHeaders[name] || name == "host" || (skip != nil && skip(k)) {
			continue
		}
		for _, v := range vv {
			if name == "te" && v != "trailers" {
				continue
			}
			fields = append(fields, hpack.HeaderField{Name: name, Value: v, Sensitive: perRequest(name)})
		}
	}
	return fields
}

// perRequest reports whether a field's value is new on every request, as
// the request ID and trace context the sidecars make. Such fields are sent
// as never indexed (RFC 7541 section 6.2.3): in the HPACK tables of a
// long-lived connection they would only push out, request after request,
// the fields that do repeat, and cost both ends a table insertion.
func perRequest(name string) bool {
	return name == "x-request-id" || name == "traceparent"
}

// fieldsHeader makes an http.Header of header fields, joining split
// cookies again (RFC 9113 section 8.2.3).
func fieldsHeader(fields []hpack.HeaderField) http.Header {
	h := make(http.Header, len(fields))
	// One array holds the values: a slice per name would cost an
	// allocation per field. A repeated name grows its own slice.
	vals := make([]string, len(fields))
	var cookies []string
	for i, f := range fields {
		if f.Name == "cookie" {
			cookies = append(cookies, f.Value)
			continue
		}
		k := canonicalNames.get(f.Name)
		if vv, ok := h[k]; ok {
			h[k] = append(vv, f.Value)
			continue
		}
		vals[i] = f.Value
		h[k] = vals[i : i+1 : i+1]
	}
	if len(cookies) > 0 {
		h["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	return h
}

// declaredTrailers makes the trailer map announced by a Trailer header.
func declaredTrailers(h http.Header) http.Header {
	var t http.Header
	for _, v := range h["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			if k = textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(k)); k != "" && !meshTrailer(k) {
				if t == nil {
					t = http.Header{}
				}
				t[k] = nil
			}
		}
	}
	return t
}

// streamBody is a message body read from a stream. At its end it fills
// trailer, when set, the message's Trailer map, with the trailers that
// came.
type streamBody struct {
	s       *tunnel.Stream
	trailer *http.Header
	eof     bool
}

func (b *streamBody) Read(p []byte) (int, error) {
	n, err := b.s.Read(p)
	if err == io.EOF && !b.eof {
		b.eof = true
		if t := b.s.Trailers(); len(t) > 0 && b.trailer != nil {
			if *b.trailer == nil {
				*b.trailer = http.Header{}
			}
			for k, vv := range fieldsHeader(t) {
				if !meshTrailer(k) { // what the proxies set comes in the head only
					(*b.trailer)[k] = vv
				}
			}
		}
	}
	return n, err
}

// trailerFields are the trailers that came, once the body was read to
// its end.
func (b *streamBody) trailerFields() []hpack.HeaderField {
	if !b.eof {
		return nil
	}
	return b.s.Trailers()
}

// Close stops the body: if it was not read to its end, the stream is
// reset so that the peer stops sending.
func (b *streamBody) Close() error {
	if !b.eof {
		b.s.Cancel(errors.New("l7: body closed before its end"))
	}
	return nil
}

// maxHeldBody is the body held back to leave with the header block: most
// responses fit, and go out in one write with their head.
const maxHeldBody = 16 << 10

// sendRequest sends req on a request stream of conn, which has a stream
// reserved, and waits for the response headers.
func sendRequest(ctx context.Context, conn *tunnel.Conn, req *request) (*response, error) {
	var body []byte
	end := req.in == nil || req.length == 0 && req.getBody != nil
	trailersOnly := false // the whole body is held, its trailers follow
	if !end && req.length < 0 && req.readAhead {
		// An HTTP/1.1 body of unknown length (chunked) is read ahead up
		// to maxHeldBody, as nginx buffers request bodies: a small one
		// leaves with the head, and one whose framing fails within that
		// never reaches the upstream at all. Past it, the rest streams,
		// and a failure resets the stream, so that the app never sees the
		// request complete. HTTP/2 bodies (gRPC's streams among them)
		// stream from the first byte: their framing cannot fail so.
		b, err := io.ReadAll(io.LimitReader(req.in, maxHeldBody+1))
		if err != nil {
			req.in.Close()
			return nil, err
		}
		body = b
		if len(b) <= maxHeldBody {
			req.in.Close()
			req.in = nil
			// So that a refused stream can be sent again (Outbound.send)
			// with the body it held, not an empty one.
			req.getBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
			if len(req.trailerNames) == 0 {
				end = true
			} else {
				trailersOnly = true
			}
		}
	}
	fields := req.wireHead(2)
	hasLength := false
	for i := 4; i < len(fields); i++ {
		f := &fields[i]
		f.Sensitive = perRequest(f.Name)
		hasLength = hasLength || f.Name == "content-length" && f.Value != ""
	}
	if len(req.trailerNames) > 0 {
		// Declared, so that the far side keeps a place for them (a proxy
		// drops the Trailer header as hop-by-hop).
		fields = append(fields, hpack.HeaderField{Name: "trailer", Value: strings.Join(req.trailerNames, ", ")})
	}
	if req.length > 0 && !hasLength {
		fields = append(fields, hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(req.length, 10)})
	}
	if !end && req.length > 0 && req.length <= maxHeldBody && len(req.trailerNames) == 0 {
		// Small and of known length: it leaves with the head. Read to
		// its end, not only to its length: a stream's body closed before
		// its end resets the client's stream (streamBody.Close).
		b := make([]byte, req.length)
		if _, err := io.ReadFull(req.in, b); err != nil {
			return nil, err
		}
		if err := readEnd(req.in, req.length); err != nil {
			req.in.Close()
			return nil, err
		}
		req.in.Close()
		body, end = b, true
		if req.getBody == nil {
			// So that a refused stream can be sent again (Outbound.send).
			req.getBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
		}
	}
	s, err := conn.OpenRequest(fields, body, end)
	if err != nil {
		if tunnel.Refused(err) {
			return nil, &dialError{err: err}
		}
		return nil, err
	}
	if trailersOnly {
		if err := s.CloseWrite(req.trailers()); err != nil {
			s.Cancel(err)
			return nil, err
		}
	} else if !end {
		go sendBody(s, req.in, req.trailers)
	}
	status, rfields, err := s.Response(ctx)
	if err != nil {
		if tunnel.Refused(err) {
			return nil, &dialError{err: err}
		}
		return nil, err
	}
	return streamResponse(s, status, rfields), nil
}

// sendBody streams a request body, then its trailers (when trailers is
// set), to s.
func sendBody(s *tunnel.Stream, body io.ReadCloser, trailers func() []hpack.HeaderField) {
	defer body.Close()
	if _, err := io.Copy(s, body); err != nil {
		s.Cancel(err)
		return
	}
	var t []hpack.HeaderField
	if trailers != nil {
		t = trailers()
	}
	if err := s.CloseWrite(t); err != nil {
		s.Cancel(err)
	}
}

// streamRequest makes the http.Request of a request stream, its context
// ctx, which ends when the stream stops (and which the caller ends when it
// is done with the request).
func streamRequest(s *tunnel.Stream, ctx *streamContext) (*http.Request, error) {
	var u *url.URL
	var err error
	switch {
	case s.Path == "*" && s.Method == http.MethodOptions:
		u = &url.URL{Path: "*"}
	case !strings.HasPrefix(s.Path, "/"):
		// RFC 9113 section 8.3.1: an http or https :path is origin-form;
		// an absolute one could name another host than :authority.
		return nil, errors.New(":path is not an absolute path")
	default:
		if u, err = url.ParseRequestURI(s.Path); err != nil {
			return nil, err
		}
	}
	h := fieldsHeader(s.Fields)
	for k := range h {
		if connectionHeaders[lowerName(k)] {
			return nil, errors.New("connection-specific header field " + k)
		}
	}
	// One authority: several Host fields, or a Host that differs from
	// :authority, could send rules and app after different hosts (RFC
	// 9113 section 8.3.1 lets a server refuse them).
	if hosts := h["Host"]; len(hosts) > 1 || len(hosts) == 1 && s.Authority != "" && hosts[0] != s.Authority {
		return nil, errors.New("Host fields that disagree with :authority or each other")
	}
	r := (&http.Request{
		Method:     s.Method,
		URL:        u,
		Proto:      "HTTP/2.0",
		ProtoMajor: 2,
		Header:     h,
		Host:       s.Authority,
		RequestURI: s.Path,
	}).WithContext(ctx)
	if r.Host == "" {
		r.Host = h.Get("Host")
	}
	h.Del("Host")
	r.ContentLength = -1
	if cl := h.Get("Content-Length"); cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 {
			return nil, errors.New("invalid content-length")
		}
		r.ContentLength = n
	}
	r.Trailer = declaredTrailers(h)
	if s.Drained() && len(r.Trailer) == 0 {
		r.ContentLength, r.Body = 0, http.NoBody
	} else {
		r.Body = &streamBody{s: s, trailer: &r.Trailer}
	}
	s.OnStop(ctx.cancel)
	return r, nil
}

// streamContext is the context of a request stream's request: it ends
// (context.Canceled) when the stream stops early or its handling is done,
// as a context.WithCancel of the background would. It lives in the
// stream's streamWriter, not allocations of its own, and it runs the
// functions given to its AfterFunc itself: context.AfterFunc on a new
// cancelCtx costs five allocations (its own, the parent's list of
// children and its Done channel), and the app client waits so on every
// request (h1.Client). Functions run on goroutines of their own, as
// context.AfterFunc's.
type streamContext struct {
	mu     sync.Mutex
	done   chan struct{} // made when first asked for
	ended  bool
	afters []afterFunc // not yet run, nor stopped
	first  [2]afterFunc
	nextID uint64
}

type afterFunc struct {
	f  func()
	id uint64
}

// closedChan is the Done channel of a context that ended before anyone
// asked for one.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (c *streamContext) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *streamContext) Value(any) any               { return nil }

func (c *streamContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		if c.ended {
			c.done = closedChan
		} else {
			c.done = make(chan struct{})
		}
	}
	return c.done
}

func (c *streamContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return context.Canceled
	}
	return nil
}

// AfterFunc runs f on its own goroutine once c has ended, at once if it
// has; stop keeps f from running and reports whether it did: as
// context.AfterFunc (which calls this, for a context derived from c).
func (c *streamContext) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	if c.afters == nil {
		c.afters = c.first[:0]
	}
	c.nextID++
	id := c.nextID
	c.afters = append(c.afters, afterFunc{f, id})
	c.mu.Unlock()
	return func() bool { return c.stopAfter(id) }
}

func (c *streamContext) stopAfter(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, a := range c.afters {
		if a.id == id {
			c.afters = append(c.afters[:i], c.afters[i+1:]...)
			return true
		}
	}
	return false
}

// cancel ends c; only the first call does anything.
func (c *streamContext) cancel() {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.ended = true
	if c.done != nil {
		close(c.done)
	}
	afters := c.afters
	c.afters = nil
	c.mu.Unlock()
	for _, a := range afters {
		go a.f()
	}
}

func (c *streamContext) String() string { return "l7.streamContext" }

// streamWriter is the http.ResponseWriter of a request stream. It holds
// the head, and up to maxHeldBody of body, until the handler flushes, the
// body grows past that, or the handler returns: a small response leaves
// in one write.
type streamWriter struct {
	ctx    streamContext // the request's
	s      *tunnel.Stream
	header http.Header
	fields []hpack.HeaderField // SetHeadFields's, sent after header's
	status int
	sent   bool
	held   []byte
	err    error
}

func (w *streamWriter) Header() http.Header {
	if w.header == nil {
		w.header = http.Header{}
	}
	return w.header
}

// SetHeadFields gives fields that the head has after the Header map's
// (see h1.HeadFieldsWriter).
func (w *streamWriter) SetHeadFields(fields []hpack.HeaderField) { w.fields = fields }

func (w *streamWriter) WriteHeader(code int) {
	if w.status != 0 || code < 200 {
		return // informational answers are not relayed
	}
	w.status = code
}

func (w *streamWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if !w.sent {
		if len(w.held)+len(p) <= maxHeldBody {
			w.held = append(w.held, p...)
			return len(p), nil
		}
		if err := w.sendHead(false); err != nil {
			return 0, err
		}
	}
	n, err := w.s.Write(p)
	w.err = err
	return n, err
}

// Flush sends the head and what is held.
func (w *streamWriter) Flush() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.sent && w.err == nil {
		w.sendHead(false)
	}
}

func (w *streamWriter) sendHead(end bool) error {
	w.sent = true
	declared := declaredTrailers(w.header)
	// Sized for the usual one field a name: growing from nothing would
	// cost an allocation per doubling.
	fields := w.fields
	if len(w.header) > 0 {
		fields = appendFields(make([]hpack.HeaderField, 0, len(w.header)+len(w.fields)), w.header, func(k string) bool {
			_, trailer := declared[k]
			return trailer || strings.HasPrefix(k, http.TrailerPrefix)
		})
		fields = append(fields, w.fields...)
	}
	w.err = w.s.WriteResponse(w.status, fields, w.held, end)
	w.held = nil
	return w.err
}

// Abort resets the stream: the peer sees the response fail.
func (w *streamWriter) Abort() {
	if w.err == nil {
		w.err = errAborted
	}
	w.s.Cancel(errAborted)
}

// finish ends the response once the handler has returned.
func (w *streamWriter) finish() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return
	}
	trailers := w.trailers()
	if !w.sent {
		if err := w.sendHead(len(trailers) == 0); err != nil || len(trailers) == 0 {
			return
		}
	}
	if err := w.s.CloseWrite(trailers); err != nil {
		w.s.Cancel(err)
	}
}

// trailers are the values of the trailers the handler declared in a
// Trailer header or set with http.TrailerPrefix.
func (w *streamWriter) trailers() []hpack.HeaderField {
	var out []hpack.HeaderField
	for k := range declaredTrailers(w.header) {
		for _, v := range w.header[k] {
			out = append(out, hpack.HeaderField{Name: lowerName(k), Value: v})
		}
	}
	for k, vv := range w.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			for _, v := range vv {
				out = append(out, hpack.HeaderField{Name: strings.ToLower(name), Value: v})
			}
		}
	}
	return out
}

// serveRequest reads the request of stream s and hands it, with the
// stream's ResponseWriter, to serve. A malformed one is handed over as a
// request that sanitize refuses (with 400, so that it reaches nothing),
// so that each handler counts and logs it as it does other refusals.
func serveRequest(s *tunnel.Stream, serve func(http.ResponseWriter, *http.Request)) {
	w := &streamWriter{s: s} // its header made when asked for, or adopted
	r, err := streamRequest(s, &w.ctx)
	if err != nil {
		bad := &badRequest{http.StatusBadRequest, "trellis: bad request: " + err.Error(), ReasonStream}
		r = (&http.Request{Method: s.Method, URL: &url.URL{}, Proto: "HTTP/2.0", ProtoMajor: 2,
			Header: http.Header{}, Body: http.NoBody, Host: s.Authority,
		}).WithContext(context.WithValue(context.Background(), malformedKey{}, bad))
	}
	defer w.ctx.cancel()
	serve(w, r)
	w.finish()
}

// malformedKey marks, in its context, a request stream that did not make
// a request; the value is the *badRequest that sanitize returns.
type malformedKey struct{}
