package h1

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/proxy/handshake"
	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
	"github.com/trellis-mesh/trellis/internal/ratelog"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
)

// Server serves the connections of clients outside the tunnel (an
// upstream listener, a gateway listener) for a handler: HTTP/1.1 on a
// loop of its own, and HTTP/2 (h2c with prior knowledge, or TLS with ALPN
// h2) with the tunnel's server, whose request streams ServeStream turns
// into requests.
//
// It replaces net/http's server for HTTP/1.1 because that server pays, on
// every request, for what a proxy in front of a local app does not use: a
// goroutine reading ahead to notice a closed connection, a context per
// request, and a chunking writer between the handler and the socket; and
// because net/http's request reader is lenient where a proxy must not be.
// Requests are read by ReadRequest (reader.go), which refuses whatever two
// HTTP/1.1 parsers could read two ways; what it accepts, net/http reads
// the same way. A refused request is answered, counted and logged, and
// its connection closed. A request's context ends with its connection,
// which is noticed when a read or write on it fails, not while the
// handler waits.
type Server struct {
	// HandshakeLog reports failed TLS handshakes of a TLS listener (set
	// before Serve); NewServer makes one on its logger.
	HandshakeLog *handshake.Log
	// BodyReadTimeout bounds the wait for each read of a request body: a
	// body that stalls longer gets 408 and the connection closes. Zero
	// means 30 s. Set before Serve.
	BodyReadTimeout time.Duration
	// Rejected counts requests refused by the HTTP/1.1 reader, by reason;
	// nil counts nothing. Set before Serve.
	Rejected *prometheus.CounterVec
	// ForbidTrailer names the fields a chunked request body's trailers
	// may not carry beyond those the reader always refuses (see
	// ReadRequest); nil forbids no more. Set before Serve.
	ForbidTrailer func(name string) bool
	// ServeStream serves the request streams of HTTP/2 clients (h2c with
	// prior knowledge, or TLS with ALPN h2): it turns stream s into a
	// request and a ResponseWriter and calls serve with them, then ends
	// the response. Server owns the connection and its goroutine; the
	// user (l7) owns what a request stream means. nil: an HTTP/2 client's
	// connection is closed unserved. Set before Serve.
	ServeStream func(s *tunnel.Stream, serve func(http.ResponseWriter, *http.Request))
	// ServeStreamDirect, when set, is offered each request stream of an
	// HTTP/2 client without TLS first: it serves the stream itself, with
	// no http.Request made, and returns true, or returns false having
	// done nothing, and ServeStream serves it. Set before Serve.
	ServeStreamDirect func(s *tunnel.Stream) bool
	// ServeHead, when set, serves the HTTP/1.1 requests of clients
	// without TLS that are a head and a body of known length (or none):
	// an origin-form target, no Transfer-Encoding, Expect or Upgrade
	// field. They are read as fields (RequestHead) and reach ServeHead,
	// not the handler; the handler gets the others. Set before Serve.
	ServeHead func(w http.ResponseWriter, h *RequestHead)
	// H2MaxHeaderBytes is the header list size an HTTP/2 client may send
	// (tunnel.Config.MaxHeaderBytes); zero means the tunnel's default.
	// Set before Serve.
	H2MaxHeaderBytes uint32
	// H2 configures the connections of HTTP/2 clients; zero fields take
	// the defaults for clients: 100 streams at once (MaxStreams), frames
	// of 16 KiB (MaxFrameSize), and the tunnel's own for the rest. Set
	// before Serve.
	H2 tunnel.Config
	// HeaderReadTimeout bounds the wait for a request's head, from its
	// first byte or the TLS handshake (30 s); IdleTimeout the wait for the
	// next request on a kept connection (5 minutes); WriteTimeout a
	// response write the client takes nothing of (60 s: a client that
	// stops reading is disconnected, and what its response held is let
	// go). Set before Serve.
	HeaderReadTimeout, IdleTimeout, WriteTimeout time.Duration
	// Acceptor runs Serve's accept loops (the listener's name, limits and
	// counters); nil means one with the default limit that logs on the
	// server's logger. Set before Serve.
	Acceptor *netconn.Acceptor

	handler  http.Handler
	log      *slog.Logger
	refusals ratelog.Limit // of the reader's refusal lines

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]bool // true: idle, between requests
	closing   atomic.Bool          // set under mu; read without it per request
	gone      chan struct{}        // closed and remade as connections end
}

// Timeouts of client connections.
const (
	readHeaderTimeout = 30 * time.Second
	bodyReadTimeout   = 30 * time.Second
	idleConnTimeout   = 5 * time.Minute
	writeTimeout      = time.Minute
	// maxBodyDrain is how much of a request body the handler left unread
	// is read and dropped to keep the connection; past it, or when the
	// handler may still be reading, the connection is closed instead.
	maxBodyDrain = 256 << 10
)

// NewServer returns a server of h with the request head limits; its
// user sets the hooks (l7.NewServer sets l7's) before Serve.
func NewServer(h http.Handler, log *slog.Logger) *Server {
	return &Server{
		HandshakeLog: &handshake.Log{Logger: log},
		handler:      h,
		log:          log,
		listeners:    map[net.Listener]struct{}{},
		conns:        map[*serverConn]bool{},
		gone:         make(chan struct{}),
	}
}

// Serve accepts connections on l until it is closed.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		l.Close()
		return http.ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	acc := s.Acceptor
	if acc == nil {
		acc = &netconn.Acceptor{Logger: s.log}
	}
	err := acc.Serve(l, s.RunConn)
	s.mu.Lock()
	delete(s.listeners, l)
	closing := s.closing.Load()
	s.mu.Unlock()
	if closing {
		return http.ErrServerClosed
	}
	return err
}

// ServeConn serves one client connection on a goroutine of its own.
func (s *Server) ServeConn(c net.Conn) {
	go s.RunConn(c)
}

// RunConn serves one client connection on the caller's goroutine, until
// the connection ends: what an Acceptor runs.
func (s *Server) RunConn(c net.Conn) {
	c = netconn.Raw(c)
	sc := &serverConn{s: s, c: c}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns[sc] = false
	s.mu.Unlock()
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, sc)
		close(s.gone)
		s.gone = make(chan struct{})
		s.mu.Unlock()
	}()
	sc.serve()
}

// Shutdown stops the listeners, closes idle connections and waits, until
// ctx ends, for the others to finish their request.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	for sc := range s.conns {
		if sc.h2 != nil {
			sc.h2.Shutdown() // GOAWAY; the connection ends with its last stream
		}
	}
	s.mu.Unlock()
	for {
		s.mu.Lock()
		for sc, idle := range s.conns {
			if idle && sc.h2 == nil {
				sc.c.Close()
			}
		}
		n, gone := len(s.conns), s.gone
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-gone:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close stops the listeners and closes every connection at once.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	for sc := range s.conns {
		sc.c.Close()
	}
	return nil
}

// setIdle marks sc idle or busy; a connection may not turn busy once the
// server is closing.
func (s *Server) setIdle(sc *serverConn, idle bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() && !idle {
		return false
	}
	s.conns[sc] = idle
	return true
}

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// clientMaxStreams bounds the streams one HTTP/2 client connection may
// have open at once.
const clientMaxStreams = 100

// clientFrameSize is the largest frame an HTTP/2 client of a listener may
// send: the size every peer must take (RFC 9113 section 4.2).
const clientFrameSize = 16 << 10

// h2Preface starts every HTTP/2 connection (RFC 9113 section 3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

type serverConn struct {
	s  *Server
	c  net.Conn
	h2 *tunnel.Conn // an HTTP/2 connection's server, else nil

	kept keptStrings // HTTP/1.1: the last request's head, to share its strings
	// head and rh are the request being read as fields, and its
	// RequestHead (ServeHead); stub is what the responseWriter reads of
	// such a request (its method, version).
	head head
	rh   RequestHead
	stub http.Request
	// noBody is the requestBody of every request without a body: the
	// handler never sees it (its request's Body is http.NoBody), so it is
	// the connection's, as the responseWriter is.
	noBody requestBody
}

func (sc *serverConn) serve() {
	c := sc.c
	defer func() {
		// As net/http's server: a handler's panic ends its connection,
		// not the process.
		if p := recover(); p != nil {
			logPanic(sc.s.log, c.RemoteAddr().String(), p)
		}
	}()
	var tlsState *tls.ConnectionState
	if tc, ok := c.(*tls.Conn); ok {
		c.SetDeadline(time.Now().Add(sc.s.headerReadTimeout()))
		if err := tc.Handshake(); err != nil {
			sc.s.HandshakeLog.Failed(c, tc, err)
			return
		}
		c.SetDeadline(time.Time{})
		st := tc.ConnectionState()
		tlsState = &st
		if st.NegotiatedProtocol == http2.NextProtoTLS {
			sc.serveH2(c, tlsState)
			return
		}
	}
	// The head of a request is read through a limit, so that an endless
	// header section ends at MaxHeaderBytes (and some slack, as net/http).
	lr := &io.LimitedReader{R: c, N: MaxHeaderBytes + 4<<10}
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(lr)
	bw := writerPool.Get().(*bufio.Writer)
	pw := &progressWriter{c: c, timeout: sc.s.writeTimeout()}
	bw.Reset(pw)
	pooled := true
	defer func() {
		if pooled {
			br.Reset(nil)
			readerPool.Put(br)
			bw.Reset(nil)
			writerPool.Put(bw)
		}
	}()

	c.SetReadDeadline(time.Now().Add(sc.s.headerReadTimeout()))
	if tlsState == nil && isH2Preface(br) {
		pooled = false // x/net's server reads on through br
		lr.N = math.MaxInt64
		c.SetReadDeadline(time.Time{})
		sc.serveH2(netconn.Peeked(c, br), nil)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx = context.WithValue(ctx, http.LocalAddrContextKey, c.LocalAddr())
	remote := c.RemoteAddr().String()
	w := &responseWriter{c: c, br: br, bw: bw, pw: pw}
	deadline := true // a read deadline is set on c
	for first := true; ; first = false {
		if !first {
			c.SetReadDeadline(time.Now().Add(sc.s.idleTimeout()))
			if _, err := br.Peek(1); err != nil {
				return
			}
			// A head that came whole in one read (most do) is read without
			// another read of the connection: no header deadline, and none
			// to clear after it. The idle one stays until the next read of
			// c, each of which sets its own (a body's, the next request's,
			// a hijack's); nothing reads c while the handler runs.
			if !headBuffered(br) {
				c.SetReadDeadline(time.Now().Add(sc.s.headerReadTimeout()))
				deadline = true
			} else {
				deadline = false
			}
		}
		if !sc.s.setIdle(sc, false) {
			return
		}
		lr.N = MaxHeaderBytes + 4<<10
		// Empty lines before a request line are ignored (RFC 9112 section
		// 2.2): old clients send a CRLF after a POST body.
		if p, _ := br.Peek(4); len(p) > 0 {
			n := 0
			for n < len(p) && (p[n] == '\r' || p[n] == '\n') {
				n++
			}
			br.Discard(n)
		}
		var req *http.Request
		var rh *RequestHead
		var err error
		closeAfter := false
		if sc.s.ServeHead != nil && tlsState == nil {
			rh, req, closeAfter, err = sc.readHead(ctx, br)
		} else {
			req, err = readRequest(ctx, br, sc.s.ForbidTrailer, &sc.kept)
		}
		if err != nil {
			var pe *ProtocolError
			switch {
			case lr.N <= 0:
				sc.s.reject(remote, refused(http.StatusRequestHeaderFieldsTooLarge, "too_large", "request header too large"), bw)
			case errors.As(err, &pe) && pe.Reason == ReasonNotHTTP:
				sc.s.count(remote, pe)
			case errors.As(err, &pe):
				sc.s.reject(remote, pe, bw)
			case !errors.Is(err, io.EOF) && !isTimeout(err) && !errors.Is(err, io.ErrUnexpectedEOF):
				sc.s.reject(remote, refused(http.StatusBadRequest, "malformed", err.Error()), bw)
			}
			return
		}
		lr.N = math.MaxInt64
		if deadline {
			c.SetReadDeadline(time.Time{})
		}
		if rh != nil {
			pooled = false // until ServeHead returns, not panics
			next, pool := sc.serveHead(w, rh, closeAfter, remote)
			if pooled = pool; !next {
				return
			}
			continue
		}
		if tlsState != nil && !sniNames(tlsState.ServerName, req.Host) {
			sc.s.reject(remote, misdirected(tlsState.ServerName, req.Host), bw)
			return
		}
		// The handler may clear req.Close (a proxy does, for the request it
		// sends on): whether this connection ends is decided here.
		closeAfter = req.Close
		req.RemoteAddr = remote
		req.TLS = tlsState
		var body *requestBody
		if req.Body == http.NoBody {
			body = &sc.noBody
			*body = requestBody{r: req.Body, c: c, timeout: sc.s.bodyReadTimeout()}
		} else {
			body = &requestBody{r: req.Body, c: c, timeout: sc.s.bodyReadTimeout()}
			req.Body = body
		}
		w.reset(req, body)
		w.close = closeAfter
		if expect := req.Header.Get("Expect"); expect != "" {
			if !httpguts.HeaderValuesContainsToken(req.Header["Expect"], "100-continue") || !req.ProtoAtLeast(1, 1) {
				writeError(bw, http.StatusExpectationFailed, "unsupported Expect header")
				return
			}
			req.Header.Del("Expect")
			body.cont = w
		}
		pooled = false // until the handler returns, not panics
		sc.s.handler.ServeHTTP(w, req)
		pooled = true
		if pe := body.Failure(); pe != nil {
			sc.s.count(remote, pe) // answered by w in place of the handler's response
		}
		if w.hijacked {
			pooled = false
			return
		}
		if sc.s.closing.Load() {
			w.close = true // the last response of a draining server
		}
		w.finish()
		if w.err != nil || w.close || closeAfter {
			if !body.done() {
				pooled = false // the handler may still be reading
			}
			return
		}
		if !body.drain() {
			pooled = false
			return
		}
		if !sc.s.setIdle(sc, true) {
			return
		}
	}
}

// readHead reads the next request as fields: a RequestHead when it is a
// simple one (head.simple), else the http.Request readRequest makes of
// it. It reports too whether the connection ends after a RequestHead.
func (sc *serverConn) readHead(ctx context.Context, br *bufio.Reader) (*RequestHead, *http.Request, bool, error) {
	h := &sc.head
	if err := readHead(br, &sc.kept, h); err != nil {
		return nil, nil, false, err
	}
	if !h.simple() {
		req, err := h.toRequest(ctx, br, sc.s.ForbidTrailer)
		return nil, req, false, err
	}
	rh := &sc.rh
	closeAfter, err := h.requestHead(rh, br)
	if err != nil {
		return nil, nil, false, err
	}
	rh.Ctx = ctx
	return rh, nil, closeAfter, nil
}

// serveHead serves a request read as fields, as serve serves one read as
// an http.Request. It reports whether the connection carries on and, when
// it does not, whether its buffers may go back to the pools.
func (sc *serverConn) serveHead(w *responseWriter, rh *RequestHead, closeAfter bool, remote string) (next, pool bool) {
	defer func() { sc.head, sc.rh = head{}, RequestHead{} }() // let the request go
	var body *requestBody
	if rh.Body == nil {
		body = &sc.noBody
		*body = requestBody{r: http.NoBody, c: sc.c, timeout: sc.s.bodyReadTimeout()}
	} else {
		body = &requestBody{r: rh.Body, c: sc.c, timeout: sc.s.bodyReadTimeout()}
		rh.Body = body
	}
	// What the writer reads of the request: HEAD's bodyless answer, the
	// version. Whether the connection ends is closeAfter's.
	sc.stub = http.Request{Method: rh.Method, ProtoMajor: 1, ProtoMinor: 1}
	if rh.Proto10 {
		sc.stub.ProtoMinor = 0
	}
	w.reset(&sc.stub, body)
	w.close = closeAfter
	sc.s.ServeHead(w, rh)
	if pe := body.Failure(); pe != nil {
		sc.s.count(remote, pe) // answered by w in place of ServeHead's response
	}
	if w.hijacked {
		return false, false
	}
	if sc.s.closing.Load() {
		w.close = true // the last response of a draining server
	}
	w.finish()
	if w.err != nil || w.close || closeAfter {
		return false, body.done()
	}
	if !body.drain() {
		return false, false
	}
	return sc.s.setIdle(sc, true), true
}

// headBuffered reports whether br holds a whole request head: a blank
// line after the request line and fields. The empty lines that may come
// before a request line (and that serve skips) are no head: a client
// sending them, then a head byte by byte, must meet the header deadline.
func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	b = bytes.TrimLeft(b, "\r\n")
	return bytes.Index(b, []byte("\r\n\r\n")) >= 0
}

// isH2Preface reports whether the connection starts with the HTTP/2
// preface. It peeks only as far as the bytes still match: an HTTP/1.0
// request can be shorter than the preface.
func isH2Preface(br *bufio.Reader) bool {
	for n := 1; ; n = min(2*n, len(h2Preface)) {
		p, err := br.Peek(n)
		if err != nil || string(p) != h2Preface[:n] {
			return false
		}
		if n == len(h2Preface) {
			return true
		}
	}
}

// serveH2 serves an HTTP/2 client with the tunnel's server, which speaks
// plain HTTP/2 to any client: each request stream becomes, by
// ServeStream, an http.Request for the handler, as on the inbound side.
// Over TLS, a request for a host the client's server name did not name
// gets 421, as on HTTP/1.1.
func (sc *serverConn) serveH2(c net.Conn, tlsState *tls.ConnectionState) {
	s := sc.s
	if s.ServeStream == nil {
		return // HTTP/2 not served: the connection closes
	}
	remote := c.RemoteAddr().String()
	// Frames of the protocol's default size (16 KiB), as Envoy, nginx
	// and HAProxy take from clients: the tunnel's 128 KiB frames are for
	// bulk between sidecars, not for clients of the listener. And at most
	// 100 streams at once per client connection (Envoy's edge default):
	// one client must not take a service's whole pool.
	cfg := s.H2
	cfg.Requests, cfg.Logger = true, s.log
	if cfg.MaxStreams == 0 {
		cfg.MaxStreams = clientMaxStreams
	}
	if cfg.MaxFrameSize == 0 {
		cfg.MaxFrameSize = clientFrameSize
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = s.H2MaxHeaderBytes
	}
	tun := tunnel.NewServer(c, cfg,
		func(st *tunnel.Stream) {
			if tlsState == nil && s.ServeStreamDirect != nil && s.serveDirect(st, remote) {
				return
			}
			s.ServeStream(st, func(w http.ResponseWriter, r *http.Request) {
				defer func() {
					if p := recover(); p != nil {
						logPanic(s.log, remote, p)
						Abort(w) // a reset, not a response cut short
					}
				}()
				r.RemoteAddr = remote
				if tlsState != nil {
					r.TLS = tlsState
					if !sniNames(tlsState.ServerName, r.Host) {
						pe := misdirected(tlsState.ServerName, r.Host)
						s.count(remote, pe)
						refuseH2(w, pe)
						return
					}
				}
				s.handler.ServeHTTP(w, r)
			})
		})
	s.mu.Lock()
	sc.h2 = tun
	closing := s.closing.Load()
	s.conns[sc] = false
	s.mu.Unlock()
	if closing {
		tun.Shutdown()
	}
	tun.Run()
}

// serveDirect offers st to ServeStreamDirect; a panic resets the stream.
func (s *Server) serveDirect(st *tunnel.Stream, remote string) (served bool) {
	defer func() {
		if p := recover(); p != nil {
			logPanic(s.log, remote, p)
			st.Cancel(errHandlerPanic) // a reset, not a response cut short
			served = true
		}
	}()
	return s.ServeStreamDirect(st)
}

var errHandlerPanic = errors.New("h1: the handler panicked")

// refuseH2 answers, in place of the handler, an HTTP/2 request the server
// refused; the stream ends with the response.
func refuseH2(w http.ResponseWriter, pe *ProtocolError) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Connection", "close")
	w.WriteHeader(pe.Status)
	io.WriteString(w, "trellis: "+pe.Msg+"\n")
}

// logPanic logs a handler's panic, as net/http's server does;
// http.ErrAbortHandler, the way to abort a response, is not logged.
func logPanic(log *slog.Logger, remote string, p any) {
	if p == http.ErrAbortHandler {
		return
	}
	buf := make([]byte, 64<<10)
	log.Error("panic serving a request", "remote", remote, "panic", p, "stack", string(buf[:runtime.Stack(buf, false)]))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (s *Server) headerReadTimeout() time.Duration {
	if s.HeaderReadTimeout > 0 {
		return s.HeaderReadTimeout
	}
	return readHeaderTimeout
}

func (s *Server) writeTimeout() time.Duration {
	if s.WriteTimeout > 0 {
		return s.WriteTimeout
	}
	return writeTimeout
}

// progressWriter writes to a client connection with a deadline that
// moves while writes progress (at most once a second, for the cost): a
// write fails only when the client has taken nothing for the timeout,
// however long the whole response takes.
type progressWriter struct {
	c       net.Conn
	timeout time.Duration
	set     time.Time
}

func (w *progressWriter) Write(p []byte) (int, error) {
	if now := time.Now(); w.timeout > 0 && now.Sub(w.set) > time.Second {
		w.c.SetWriteDeadline(now.Add(w.timeout))
		w.set = now
	}
	return w.c.Write(p)
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout > 0 {
		return s.IdleTimeout
	}
	return idleConnTimeout
}

func (s *Server) bodyReadTimeout() time.Duration {
	if s.BodyReadTimeout > 0 {
		return s.BodyReadTimeout
	}
	return bodyReadTimeout
}

// reject answers a request the reader refused, counts and logs it; the
// connection closes after it.
func (s *Server) reject(remote string, pe *ProtocolError, bw *bufio.Writer) {
	writeError(bw, pe.Status, pe.Msg)
	s.count(remote, pe)
}

// refusalsPerSecond bounds the lines a server logs a second for requests
// its reader refused; Rejected counts them all.
const refusalsPerSecond = 100

// count counts and logs a refused request. The log is at info: a client
// sending what the reader refuses is a broken or hostile one, and the
// operator may want to know which.
func (s *Server) count(remote string, pe *ProtocolError) {
	if s.Rejected != nil {
		s.Rejected.WithLabelValues(pe.Reason).Inc()
	}
	n, ok := s.refusals.Take(time.Now(), refusalsPerSecond)
	if !ok {
		return
	}
	args := []any{"remote", remote, "status", pe.Status, "reason", pe.Reason, "detail", cut(pe.Msg, 512)}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	s.log.Info("HTTP/1.1 request refused", args...)
}

// sniNames reports whether a TLS client that sent server name sni may ask
// for host: the same name (port and a final dot aside, case ignored), or
// any host if it sent no name (a client that dialed an address).
func sniNames(sni, host string) bool {
	if sni == "" {
		return true
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.EqualFold(strings.TrimSuffix(host, "."), strings.TrimSuffix(sni, "."))
}

func misdirected(sni, host string) *ProtocolError {
	return refused(http.StatusMisdirectedRequest, "misdirected",
		"this connection is for "+quoteShort(sni)+" (TLS server name), not "+quoteShort(host))
}

// writeError answers a request that never reached the handler, and the
// connection closes after it.
func writeError(bw *bufio.Writer, code int, msg string) {
	body := http.StatusText(code) + ": " + msg + "\n"
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(StatusLine(code))
	bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	bw.WriteString("\r\n\r\n")
	bw.WriteString(body)
	bw.Flush()
}

// requestBody is a request body as the handler sees it. It knows whether
// the body was read to its end, and sends "100 Continue" before the first
// read when the client asked for it.
type requestBody struct {
	r       io.ReadCloser
	c       net.Conn      // its read deadline bounds each read
	timeout time.Duration // the body read timeout
	cont    *responseWriter
	mu      sync.Mutex
	eof     bool
	closed  bool
	busy    bool
	failed  *ProtocolError // the body's framing failed, or it timed out
}

func (b *requestBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return 0, http.ErrBodyReadAfterClose
	}
	if b.eof {
		b.mu.Unlock()
		return 0, io.EOF
	}
	b.busy = true
	cont := b.cont
	b.cont = nil
	b.mu.Unlock()
	if cont != nil {
		cont.writeContinue()
	}
	b.c.SetReadDeadline(time.Now().Add(b.timeout))
	n, err := b.r.Read(p)
	b.mu.Lock()
	b.busy = false
	var pe *ProtocolError
	switch {
	case err == nil:
	case err == io.EOF:
		b.eof = true
		b.c.SetReadDeadline(time.Time{})
	case errors.As(err, &pe):
		b.failed = pe
	case isTimeout(err):
		b.failed = refused(http.StatusRequestTimeout, "body_timeout", "no request body byte within "+b.timeout.String())
		err = b.failed
	default:
		// The client went away or its connection broke mid-body: as a
		// framing failure, the request must not be taken for a whole one,
		// and it is the client's doing, not the upstream's.
		b.failed = refused(http.StatusBadRequest, "body_incomplete", "the request body ended early: "+err.Error())
	}
	b.mu.Unlock()
	return n, err
}

// Failure is why the body failed, or nil: its framing was malformed, it
// stalled past the body read timeout, or the client went away mid-body.
// A proxy tells by it a failure of the client's doing from an upstream's.
func (b *requestBody) Failure() *ProtocolError {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failed
}

// Close stops reading: what is left is the server's to drop or not.
func (b *requestBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// done reports whether the body was read to its end (and is no longer
// read by anyone).
func (b *requestBody) done() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof && !b.busy || b.r == http.NoBody
}

// drain reads and drops what the handler left of the body, up to
// maxBodyDrain; it reports whether the connection may carry another
// request.
func (b *requestBody) drain() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.r == http.NoBody || b.eof {
		return !b.busy
	}
	if b.busy || b.cont != nil {
		// Still being read elsewhere; or, with Expect: 100-continue, the
		// client may never send the body it was not asked for.
		return false
	}
	b.c.SetReadDeadline(time.Now().Add(b.timeout))
	n, err := io.CopyN(io.Discard, b.r, maxBodyDrain+1)
	b.closed = true
	return err == io.EOF && n <= maxBodyDrain
}
