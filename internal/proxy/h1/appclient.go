package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
)

// Client sends requests to the local app over HTTP/1.1 keep-alive
// connections: an http.RoundTripper. It does what http.Transport does for
// this one job, without its two goroutines per connection and the
// hand-offs between them and the caller: the caller writes the request and
// reads the response head itself, so a request costs a write and a read.
// Set its fields before the first request.
type Client struct {
	// Target is the app's address (host:port): every request goes there,
	// whatever its URL says.
	Target string
	// Dial makes a connection to Target; nil means a net.Dialer's.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxIdle bounds the idle connections kept; zero means
	// DefaultMaxIdle.
	MaxIdle int

	mu   sync.Mutex
	idle []*appConn
}

// DefaultMaxIdle is the idle connections a Client keeps when MaxIdle is
// zero.
const DefaultMaxIdle = 256

var _ http.RoundTripper = (*Client)(nil)

type appConn struct {
	c    net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	used time.Time
	// interrupt ends the wait of a request whose caller went away: made
	// once per connection, not a closure per request.
	interrupt func()
	kept      keptStrings // the last response's head (readResponse)
	// await, when the connection is one, writes a request's last bytes
	// and waits for the answer in one call (armed for that write); fresh
	// says whether this request may (see awaitFresh).
	await        netconn.Awaiter
	armed, fresh bool
}

// awaitFresh is how recently a kept connection must have been used for
// a request on it to be written with WriteAwait. The wait is for
// readiness that comes after the write: what the app sent before it (a
// close begun while the connection was idle: a FIN, an nginx-style
// lingering close that reads on but answers nothing) would not end it,
// and it would last until the request's deadline, where a read sees the
// end at once and the request goes again on a new connection. Apps do
// not close a connection used within the last second.
const awaitFresh = time.Second

// connWriter is an appConn's buffered writer's destination.
type connWriter struct{ ac *appConn }

func (w connWriter) Write(p []byte) (int, error) {
	if w.ac.armed && w.ac.await != nil {
		return w.ac.await.WriteAwait(p)
	}
	return w.ac.c.Write(p)
}

// flushAwait flushes a request whose answer is read next.
func (ac *appConn) flushAwait() error {
	ac.armed = ac.fresh
	err := ac.bw.Flush()
	ac.armed = false
	return err
}

// idleTimeout closes connections unused this long: apps often close
// theirs after a minute or two, and a request on a connection the app is
// closing fails.
const idleTimeout = 50 * time.Second

func (a *Client) get(ctx context.Context) (*appConn, bool, error) {
	a.mu.Lock()
	for n := len(a.idle); n > 0; n = len(a.idle) {
		ac := a.idle[n-1]
		a.idle = a.idle[:n-1]
		if idle := time.Since(ac.used); idle < idleTimeout {
			a.mu.Unlock()
			ac.fresh = idle < awaitFresh
			return ac, true, nil
		}
		ac.c.Close()
	}
	a.mu.Unlock()
	dial := a.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	c, err := dial(ctx, "tcp", a.Target)
	if err != nil {
		return nil, false, err
	}
	ac := &appConn{c: c, br: bufio.NewReaderSize(c, 4<<10)}
	ac.bw = bufio.NewWriterSize(connWriter{ac}, 4<<10)
	ac.await, _ = c.(netconn.Awaiter)
	ac.fresh = true
	ac.interrupt = func() { ac.c.SetDeadline(time.Unix(1, 0)) }
	return ac, false, nil
}

func (a *Client) put(ac *appConn) {
	ac.used = time.Now()
	a.mu.Lock()
	maxIdle := a.MaxIdle
	if maxIdle == 0 {
		maxIdle = DefaultMaxIdle
	}
	if len(a.idle) < maxIdle {
		a.idle = append(a.idle, ac)
		ac = nil
	}
	a.mu.Unlock()
	if ac != nil {
		ac.c.Close()
	}
}

// CloseIdleConnections closes the connections not in use.
func (a *Client) CloseIdleConnections() {
	a.mu.Lock()
	idle := a.idle
	a.idle = nil
	a.mu.Unlock()
	for _, ac := range idle {
		ac.c.Close()
	}
}

// RoundTrip sends req to the app and returns its response; the response
// body gives the connection back when read to its end or closed.
func (a *Client) RoundTrip(req *http.Request) (*http.Response, error) {
	_, resp, err := a.do(&outgoing{ctx: req.Context(), req: req}, false)
	return resp, err
}

// RoundTripFields is RoundTrip for a proxy: the usual response, read the
// short way, comes as a Response, its head as fields and no http.Header
// made; any other comes as an http.Response. One of the two is nil.
func (a *Client) RoundTripFields(req *http.Request) (*Response, *http.Response, error) {
	return a.do(&outgoing{ctx: req.Context(), req: req}, true)
}

// Head is a request for RoundTripHead, as the proxies carry one: HTTP/2's
// pseudo-header values and a field list.
type Head struct {
	Method string
	// Target is the request target in origin form (or "*"); Host is the
	// authority.
	Target, Host string
	// Fields are the other fields, names in lowercase, in order, without
	// hop-by-hop ones (the caller removed them): written as they are.
	// Host, framing and Expect fields among them are left out. Without a
	// user-agent field, the request has none.
	Fields []hpack.HeaderField
	// Body is the whole body, nil for none.
	Body []byte
}

// RoundTripHead is RoundTripFields for a request given as a Head, its body
// whole in memory: no http.Request or http.Header made to send it. ctx
// ends the wait (and, when it is an afterFuncer, is asked to run the
// interruption itself).
func (a *Client) RoundTripHead(ctx context.Context, h *Head) (*Response, *http.Response, error) {
	return a.do(&outgoing{ctx: ctx, head: h}, true)
}

// outgoing is a request to send: an http.Request, or a Head.
type outgoing struct {
	ctx  context.Context
	req  *http.Request
	head *Head
}

func (o *outgoing) bodiless() bool {
	if o.head != nil {
		return o.head.Body == nil
	}
	return noBody(o.req)
}

// forResponse is the request that reading the response is told of (its
// method says whether a body follows): req, or a shared one of the Head's
// method, which nothing writes to.
func (o *outgoing) forResponse() *http.Request {
	if o.req != nil {
		return o.req
	}
	if r, ok := methodRequests[o.head.Method]; ok {
		return r
	}
	return &http.Request{Method: o.head.Method}
}

var methodRequests = func() map[string]*http.Request {
	m := map[string]*http.Request{}
	for _, k := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
		http.MethodDelete, http.MethodOptions, http.MethodTrace, http.MethodPatch} {
		m[k] = &http.Request{Method: k}
	}
	return m
}()

func (a *Client) do(o *outgoing, fields bool) (*Response, *http.Response, error) {
	if o.req != nil {
		// The caller's sidecar already sent "100 Continue" if one was
		// asked for, and the body is on its way: the app need not be
		// asked again. (A Head's is left out as it is written.)
		o.req.Header.Del("Expect")
	}
	for try := 0; ; try++ {
		ac, reused, err := a.get(o.ctx)
		if err != nil {
			return nil, nil, err
		}
		fr, resp, err := a.roundTrip(ac, o, fields)
		if err == nil {
			return fr, resp, nil
		}
		ac.c.Close()
		// A kept connection the app closed meanwhile fails before the app
		// saw anything: try a new one, once, if the request was not sent,
		// or if nothing came back and sending it twice does no harm (an
		// idempotent method, no body: net/http's rule). The app may have
		// seen a request it closed on without answering.
		var nw *notWritten
		if reused && try == 0 && (errors.As(err, &nw) || errors.Is(err, io.EOF) && o.replayable()) {
			continue
		}
		return nil, nil, err
	}
}

// afterFuncer is a context that runs f after it ends, as
// context.AfterFunc does; the context package asks a parent context so
// too.
type afterFuncer interface {
	AfterFunc(f func()) (stop func() bool)
}

// notWritten is a failure to send a request: the app saw none of it.
type notWritten struct{ err error }

func (e *notWritten) Error() string { return e.err.Error() }
func (e *notWritten) Unwrap() error { return e.err }

func noBody(req *http.Request) bool { return req.Body == nil || req.Body == http.NoBody }

// replayable is a request that may be sent again after the app closed
// the connection without answering: bodiless, and idempotent by its
// method or by an idempotency key.
func (o *outgoing) replayable() bool {
	if !o.bodiless() {
		return false
	}
	method := o.method()
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	if o.req != nil {
		return o.req.Header.Get("Idempotency-Key") != "" || o.req.Header.Get("X-Idempotency-Key") != ""
	}
	for _, f := range o.head.Fields {
		if (f.Name == "idempotency-key" || f.Name == "x-idempotency-key") && f.Value != "" {
			return true
		}
	}
	return false
}

func (o *outgoing) method() string {
	if o.head != nil {
		return o.head.Method
	}
	return o.req.Method
}

// roundTrip sends o on ac and reads the response head; with fields, one
// read the short way comes as a Response.
func (a *Client) roundTrip(ac *appConn, o *outgoing, fields bool) (*Response, *http.Response, error) {
	var body *appBody
	var stop func() bool
	if af, ok := o.ctx.(afterFuncer); ok {
		// A context that runs functions after its end itself (the
		// inbound's request streams): what context.AfterFunc would ask
		// it, without the context package's own allocations.
		stop = af.AfterFunc(ac.interrupt)
	} else {
		stop = context.AfterFunc(o.ctx, ac.interrupt)
	}
	defer func() {
		if !stop() && body != nil {
			// Canceled as the response came: the deadline that ended the
			// wait stays on the connection, and a body already buffered
			// would still read to its end, so the connection must not go
			// back to the pool (the next request on it would fail).
			body.reuse = false
		}
	}()
	var written chan error
	if o.head != nil {
		err := writeHead(ac.bw, o.head)
		if err == nil {
			err = ac.flushAwait()
		}
		switch {
		case err != nil && o.head.Body == nil:
			return nil, nil, &notWritten{err}
		case err != nil:
			// Part of it may have reached the app (a large head or body
			// goes out as the buffer fills): a request with a body is
			// not sent twice, as one whose body streams never is.
			return nil, nil, err
		}
	} else if req := o.req; noBody(req) {
		if err := writeBodiless(ac.bw, req); err != nil {
			return nil, nil, &notWritten{err}
		}
		if err := ac.flushAwait(); err != nil {
			return nil, nil, &notWritten{err}
		}
	} else {
		// The body streams while the response is read: an app may answer
		// before it has read all of it.
		written = make(chan error, 1)
		go func() {
			err := req.Write(ac.bw)
			if err == nil {
				err = ac.bw.Flush()
			}
			if err != nil {
				ac.c.Close()
			}
			written <- err
		}()
	}
	var resp *http.Response
	var ar *appResponse
	req := o.forResponse()
	for {
		var err error
		if fields {
			resp, ar, err = readResponseFields(ac.br, req, &ac.kept)
		} else {
			resp, ar, err = readResponse(ac.br, req, &ac.kept)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read response from app: %w", err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// 1xx: the final response follows.
	}
	if ar != nil {
		body = &ar.app // made with the response
	} else {
		body = new(appBody)
	}
	*body = appBody{ReadCloser: resp.Body, a: a, ac: ac, reuse: !resp.Close && !(o.req != nil && o.req.Close), written: written}
	resp.Body = body
	if fields && ar != nil {
		ar.fields.Body = body
		return &ar.fields, nil, nil
	}
	return nil, resp, nil
}

// writeBodiless writes a request without a body as req.Write does (Host
// and User-Agent first, then the other fields; "Content-Length: 0" for the
// methods that expect a body), without net/http's transfer writer, which
// sorts the field names and allocates several times on every request.
func writeBodiless(bw *bufio.Writer, req *http.Request) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	host, err := hostValue(host)
	if err != nil {
		return err
	}
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(req.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	ua := "Go-http-client/1.1"
	if v, ok := req.Header["User-Agent"]; ok {
		ua = ""
		if len(v) > 0 {
			ua = v[0]
		}
	}
	if ua != "" {
		writeField(bw, "User-Agent", ua)
	}
	switch req.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n")
	}
	for k, vv := range req.Header {
		switch k {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			// As req.Write: a name that is no token would let the
			// request's framing be read otherwise by the app.
			return fmt.Errorf("invalid header field name %q", k)
		}
		for _, v := range vv {
			writeField(bw, k, v)
		}
	}
	_, err = bw.WriteString("\r\n")
	return err
}

// hostValue is the Host field's value for an authority, checked as
// req.Write checks it.
func hostValue(host string) (string, error) {
	host, err := httpguts.PunycodeHostPort(host)
	if err != nil {
		return "", err
	}
	if !httpguts.ValidHostHeader(host) {
		return "", errors.New("http: invalid Host header")
	}
	// An IPv6 zone names an interface of the sender, not a host.
	if end := strings.LastIndexByte(host, ']'); end > 0 && host[0] == '[' {
		if zone := strings.LastIndexByte(host[:end], '%'); zone > 0 {
			host = host[:zone] + host[end:]
		}
	}
	return host, nil
}

// writeHead writes h as writeBodiless writes a request: Host first, the
// fields in their order, then the body's length and the body.
func writeHead(bw *bufio.Writer, h *Head) error {
	host, err := hostValue(h.Host)
	if err != nil {
		return err
	}
	// The request line is written as it is, where req.Write escapes a
	// URL: a method or target that is no token or holds white space or
	// a line break would be read otherwise by the app, or be a second
	// request.
	if !validMethod(h.Method) {
		return fmt.Errorf("invalid method %q", h.Method)
	}
	for i := 0; i < len(h.Target); i++ {
		if c := h.Target[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("invalid request target %q", h.Target)
		}
	}
	if h.Target == "" {
		return errors.New("empty request target")
	}
	bw.WriteString(h.Method)
	bw.WriteByte(' ')
	bw.WriteString(h.Target)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	for _, f := range h.Fields {
		if f.Name == "user-agent" {
			// The first one only, and not when empty, as writeBodiless.
			if f.Value != "" {
				writeField(bw, "User-Agent", f.Value)
			}
			break
		}
	}
	cookies := 0
	for _, f := range h.Fields {
		switch f.Name {
		case "host", "content-length", "transfer-encoding", "trailer", "expect", "user-agent":
			continue
		case "cookie":
			// HTTP/2 splits a cookie into fields; HTTP/1.1 has one
			// (RFC 9113 section 8.2.3).
			if cookies++; cookies == 1 {
				writeField(bw, f.Name, joinCookies(h.Fields, f.Value))
			}
			continue
		}
		if !httpguts.ValidHeaderFieldName(f.Name) {
			return fmt.Errorf("invalid header field name %q", f.Name)
		}
		writeField(bw, f.Name, f.Value)
	}
	switch {
	case h.Body != nil:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(h.Body)), 10))
		bw.WriteString("\r\n")
	case h.Method == http.MethodPost || h.Method == http.MethodPut || h.Method == http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n")
	}
	bw.WriteString("\r\n")
	_, err = bw.Write(h.Body)
	return err
}

// validMethod reports whether m is a token (RFC 9110 section 9.1).
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		if !httpguts.IsTokenRune(rune(m[i])) {
			return false
		}
	}
	return true
}

// joinCookies is the value of every cookie field of fields, first the
// first one's, joined with "; ".
func joinCookies(fields []hpack.HeaderField, first string) string {
	var b strings.Builder
	n := 0
	for _, f := range fields {
		if f.Name != "cookie" {
			continue
		}
		if n++; n == 2 {
			b.WriteString(first)
		}
		if n > 1 {
			b.WriteString("; ")
			b.WriteString(f.Value)
		}
	}
	if n < 2 {
		return first
	}
	return b.String()
}

// appBody returns its connection to the pool once read to the end.
type appBody struct {
	io.ReadCloser
	a     *Client
	ac    *appConn
	reuse bool
	done  bool
	// written, for a request with a body, says when it was all sent: the
	// connection is reusable only then.
	written chan error
}

func (b *appBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !b.done {
		b.done = true
		if err == io.EOF && b.reuse && b.sent() {
			b.a.put(b.ac)
		} else {
			b.ac.c.Close()
		}
	}
	return n, err
}

func (b *appBody) Close() error {
	if !b.done {
		b.done = true
		b.ac.c.Close() // not read to its end: the connection is unusable
	}
	return nil
}

// sent reports whether the whole request went out without error.
func (b *appBody) sent() bool {
	if b.written == nil {
		return true
	}
	select {
	case err := <-b.written:
		return err == nil
	default:
		return false // the app answered without reading it all
	}
}
