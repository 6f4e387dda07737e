package h1

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"
)

// responseWriter is the http.ResponseWriter of Server's HTTP/1.1
// connections. It writes the head and the body into the connection's
// buffer and flushes when the handler flushes or returns, so a small
// response leaves in one write; a body of unknown length that fits in
// maxHeld gets a Content-Length, a longer one is chunked (HTTP/1.1) or
// ends with the connection (HTTP/1.0).
type responseWriter struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
	pw *progressWriter // under bw: the write deadline

	req      *http.Request
	body     *requestBody // req's body; nil if it has none
	header   http.Header
	fields   []hpack.HeaderField // SetHeadFields's, written after header's
	fieldsCL int64               // the Content-Length among fields, or -1
	status   int
	held     []byte
	cl       int64 // the declared Content-Length, or -1
	written  int64
	bodyless bool // HEAD, 204, 304: no body on the wire
	chunked  bool
	close    bool // the connection ends after this response
	hijacked bool
	err      error

	// mu orders "100 Continue", written when the handler first reads the
	// body (perhaps on another goroutine), before the head.
	mu       sync.Mutex
	headDone bool
}

// maxHeld is the body held back to learn a response's length.
const maxHeld = 4 << 10

func (w *responseWriter) reset(req *http.Request, body *requestBody) {
	w.body = body
	if w.header == nil {
		w.header = make(http.Header, 8)
	} else {
		clear(w.header) // the handler is done with it: keep its buckets
	}
	w.req, w.status, w.held = req, 0, w.held[:0]
	w.fields, w.fieldsCL = nil, -1
	w.cl, w.written, w.bodyless, w.chunked, w.close, w.err = -1, 0, false, false, false, nil
	w.headDone = false
}

func (w *responseWriter) Header() http.Header { return w.header }

// A HeadFieldsWriter is a ResponseWriter that also takes its head as
// HTTP/2 header fields, which a proxy relays without making an
// http.Header of them. SetHeadFields, called before the head is written,
// gives fields that the head has after the Header map's; their names are
// lowercase tokens, their values valid, and none is a connection-specific
// field (RFC 9113 section 8.2.2) or Trailer. A Content-Length among them
// frames the body as one in the map would. The writer keeps fields until
// the head is out.
type HeadFieldsWriter interface {
	http.ResponseWriter
	SetHeadFields(fields []hpack.HeaderField)
}

var _ HeadFieldsWriter = (*responseWriter)(nil)

func (w *responseWriter) SetHeadFields(fields []hpack.HeaderField) {
	w.fields, w.fieldsCL = fields, -1
	for _, f := range fields {
		if f.Name == "content-length" {
			if n, ok := parseContentLength(f.Value); ok {
				w.fieldsCL = n
			}
			break
		}
	}
}

// declaredLength is the Content-Length the handler set, in the Header map
// or among the head's fields, or -1.
func (w *responseWriter) declaredLength() int64 {
	if v := w.header["Content-Length"]; len(v) == 1 {
		if n, err := strconv.ParseInt(v[0], 10, 64); err == nil && n >= 0 {
			return n
		}
		return -1
	}
	return w.fieldsCL
}

func (w *responseWriter) WriteHeader(code int) {
	if w.headDone || w.status != 0 || w.hijacked {
		return
	}
	if code < 100 || code > 999 {
		panic("h1: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code < 200 {
		if code == http.StatusContinue || code == http.StatusSwitchingProtocols {
			return // 100 is the server's to send; 101 comes by Hijack
		}
		w.mu.Lock()
		w.bw.WriteString("HTTP/1.1 ")
		w.bw.WriteString(StatusLine(code))
		w.bw.WriteString("\r\n")
		w.writeFields(nil, false)
		w.bw.WriteString("\r\n")
		w.err = w.bw.Flush()
		w.mu.Unlock()
		return
	}
	w.status = code
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if !w.headDone {
		if w.header.Get("Content-Length") == "" && w.fieldsCL < 0 && len(w.held)+len(p) <= maxHeld {
			w.held = append(w.held, p...)
			return len(p), nil
		}
		w.writeHead(false)
	}
	return w.writeBody(p)
}

// Flush sends the head, if not yet sent, and what is buffered.
func (w *responseWriter) Flush() {
	if w.hijacked {
		return
	}
	w.head(false)
	if w.err == nil {
		w.err = w.bw.Flush()
	}
}

// Abort ends the response as failed: the connection closes without the
// rest of the body or the last chunk.
func (w *responseWriter) Abort() {
	w.close = true
	if w.err == nil {
		w.err = errAborted
	}
}

var errAborted = errors.New("h1: response aborted")

// An Aborter is a ResponseWriter that can end a response as failed (an
// HTTP/1.1 connection closed before the last chunk, a stream reset).
type Aborter interface{ Abort() }

var _ Aborter = (*responseWriter)(nil)

// Abort ends w's response as failed: by w's Abort, or the one of a writer
// it wraps (Unwrap, as http.ResponseController); a writer without one, as
// x/net's HTTP/2 server's, gets the panic that makes it reset the stream.
func Abort(w http.ResponseWriter) {
	for {
		switch x := w.(type) {
		case Aborter:
			x.Abort()
			return
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			panic(http.ErrAbortHandler)
		}
	}
}

// head writes the head unless it is out (status 200 unless one was set);
// final as for writeHead.
func (w *responseWriter) head(final bool) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headDone {
		w.writeHead(final)
	}
}

// Hijack hands the connection to the handler (for an upgrade); what the
// reader holds beyond the request is in the returned reader.
func (w *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.headDone || w.hijacked {
		return nil, nil, errors.New("h1: hijack after the response began")
	}
	w.mu.Lock()
	w.hijacked, w.headDone = true, true
	w.mu.Unlock()
	// The connection is the handler's now: no body read's deadline, and
	// no response write's (the handler writes to it directly too).
	w.c.SetDeadline(time.Time{})
	if w.pw != nil {
		w.pw.timeout = 0
	}
	return w.c, bufio.NewReadWriter(w.br, w.bw), nil
}

// writeContinue answers "Expect: 100-continue" unless the response began.
func (w *responseWriter) writeContinue() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.headDone {
		w.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		w.bw.Flush()
	}
}

// writeHead decides the framing and writes the head; final says the
// handler has returned, so that what is held is the whole body. The
// framing fields (Content-Length, Transfer-Encoding, Connection) are
// written from what was decided, not from the handler's header.
func (w *responseWriter) writeHead(final bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.headDone = true
	if pe := w.body.Failure(); pe != nil {
		w.writeBodyFailure(pe)
		return
	}
	h, req := w.header, w.req
	w.bodyless = req.Method == http.MethodHead || w.status == http.StatusNoContent || w.status == http.StatusNotModified
	w.cl = w.declaredLength()
	trailers := len(h["Trailer"]) > 0 || hasTrailerPrefix(h)
	switch {
	case w.status == http.StatusNoContent:
		w.cl = -1
	case w.bodyless:
		if req.Method == http.MethodHead && w.cl < 0 && final && len(w.held) > 0 {
			w.cl = int64(len(w.held))
		}
	case trailers && req.ProtoAtLeast(1, 1):
		w.cl, w.chunked = -1, true // trailers ride only on chunked bodies
	case w.cl >= 0:
	case final:
		w.cl = int64(len(w.held))
	case req.ProtoAtLeast(1, 1):
		w.chunked = true
	default:
		w.close = true // the body ends with the connection
	}
	if httpguts.HeaderValuesContainsToken(h["Connection"], "close") || req.Close {
		w.close = true
	}
	bw := w.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(StatusLine(w.status))
	bw.WriteString("\r\n")
	w.writeFields(func(k string) bool {
		switch k {
		case "Content-Length", "Transfer-Encoding", "Connection":
			return true
		}
		return strings.HasPrefix(k, http.TrailerPrefix)
	}, true)
	if w.cl >= 0 {
		bw.WriteString("Content-Length: ")
		// Into the writer's own buffer: an array of ours would escape
		// through Write, an allocation per response.
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), w.cl, 10))
		bw.WriteString("\r\n")
	}
	if w.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	switch {
	case w.close:
		bw.WriteString("Connection: close\r\n")
	case !req.ProtoAtLeast(1, 1):
		bw.WriteString("Connection: keep-alive\r\n")
	}
	if _, ok := h["Date"]; !ok && !hasField(w.fields, "date") {
		bw.WriteString("Date: ")
		bw.WriteString(httpDate())
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
	held := w.held
	w.writeBody(held)
	w.held = held[:0]
}

// writeBodyFailure answers, in place of the handler's response, a request
// whose body could not be read to its end: malformed framing (400, 501)
// or a body that stalled (408). What the handler then writes is dropped,
// and the connection closes, since where the next request would start is
// unknown.
func (w *responseWriter) writeBodyFailure(pe *ProtocolError) {
	msg := http.StatusText(pe.Status) + ": " + pe.Msg + "\n"
	w.status, w.cl, w.chunked, w.bodyless, w.close = pe.Status, -1, false, true, true
	bw := w.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(StatusLine(pe.Status))
	bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(msg)))
	bw.WriteString("\r\n\r\n")
	bw.WriteString(msg)
	w.held = w.held[:0]
}

// writeFields writes the Header map's fields but those skip names, and
// with head the head's fields (SetHeadFields) but the framing ones.
func (w *responseWriter) writeFields(skip func(string) bool, head bool) {
	for k, vv := range w.header {
		if !httpguts.ValidHeaderFieldName(k) || skip != nil && skip(k) {
			continue
		}
		for _, v := range vv {
			writeField(w.bw, k, v)
		}
	}
	if !head {
		return
	}
	for _, f := range w.fields {
		switch {
		case f.Name == "content-length" || f.Name == "transfer-encoding" || f.Name == "connection":
			// Framing is written from what writeHead decided.
		case !httpguts.ValidHeaderFieldName(f.Name):
			// Producers check names; a name that is no token would still
			// let the client read the head otherwise than we wrote it.
		default:
			writeField(w.bw, f.Name, f.Value)
		}
	}
}

func hasField(fields []hpack.HeaderField, name string) bool {
	for _, f := range fields {
		if f.Name == name {
			return true
		}
	}
	return false
}

func (w *responseWriter) writeBody(p []byte) (int, error) {
	if w.bodyless || len(p) == 0 {
		return len(p), nil
	}
	if w.cl >= 0 && w.written+int64(len(p)) > w.cl {
		w.close = true
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.chunked {
		var b [18]byte
		w.bw.Write(strconv.AppendInt(b[:0], int64(len(p)), 16))
		w.bw.WriteString("\r\n")
		w.bw.Write(p)
		_, w.err = w.bw.WriteString("\r\n")
	} else {
		_, w.err = w.bw.Write(p)
	}
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// finish ends the response after the handler returned: the head if it is
// still held, the last chunk and trailers, and one flush.
func (w *responseWriter) finish() {
	if w.hijacked {
		return
	}
	w.head(true)
	if w.err != nil {
		w.close = true
		return
	}
	if w.chunked {
		w.bw.WriteString("0\r\n")
		w.writeTrailers()
		w.bw.WriteString("\r\n")
	} else if w.cl >= 0 && w.written < w.cl && !w.bodyless {
		w.close = true // the body came short: the client must not wait for more
	}
	w.err = w.bw.Flush()
}

// writeTrailers writes the trailers declared in the Trailer header and
// those set under http.TrailerPrefix.
func (w *responseWriter) writeTrailers() {
	for _, v := range w.header["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			if !httpguts.ValidHeaderFieldName(k) {
				continue
			}
			for _, tv := range w.header[k] {
				if httpguts.ValidHeaderFieldValue(tv) {
					w.bw.WriteString(k + ": " + tv + "\r\n")
				}
			}
		}
	}
	for k, vv := range w.header {
		name, ok := strings.CutPrefix(k, http.TrailerPrefix)
		if !ok || !httpguts.ValidHeaderFieldName(name) {
			continue
		}
		for _, v := range vv {
			if httpguts.ValidHeaderFieldValue(v) {
				w.bw.WriteString(name + ": " + v + "\r\n")
			}
		}
	}
}

func hasTrailerPrefix(h http.Header) bool {
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// statusLines are "200 OK" and the like, made once.
var statusLines = func() (s [600]string) {
	for code := range s {
		if text := http.StatusText(code); text != "" {
			s[code] = strconv.Itoa(code) + " " + text
		}
	}
	return s
}()

// StatusLine is "200 OK" for 200: the status line's text, as
// http.Response.Status holds it.
func StatusLine(code int) string {
	if code < len(statusLines) && statusLines[code] != "" {
		return statusLines[code]
	}
	return strconv.Itoa(code) + " status code " + strconv.Itoa(code)
}

// writeField writes one header field line. As net/http does, line breaks
// in the value become spaces and blanks around it go (spaces and tabs
// only: other characters are the value's).
func writeField(bw *bufio.Writer, k, v string) {
	// Two byte searches: ContainsAny's general path cost more than the
	// rest of the line on every field.
	if strings.IndexByte(v, '\r') >= 0 || strings.IndexByte(v, '\n') >= 0 {
		v = newlineToSpace.Replace(v)
	}
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(textproto.TrimString(v))
	bw.WriteString("\r\n")
}

// newlineToSpace keeps a field value on its line.
var newlineToSpace = strings.NewReplacer("\r", " ", "\n", " ")

// httpDate is the Date header now, formatted once a second.
func httpDate() string {
	now := time.Now().Unix()
	if d := cachedDate.Load(); d != nil && d.unix == now {
		return d.text
	}
	d := &dateText{unix: now, text: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.text
}

type dateText struct {
	unix int64
	text string
}

var cachedDate atomic.Pointer[dateText]
