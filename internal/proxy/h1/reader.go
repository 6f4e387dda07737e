package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// The HTTP/1.1 request reader of Server (and of whoever reads a request
// head with ReadRequest). It reads a request head and frames
// its body by RFC 9112 to the letter and refuses, with the status the RFC
// names, everything that two HTTP/1.1 parsers could read two ways: the
// ambiguities that request smuggling lives on. net/http's reader is lenient
// where a proxy must not be (it takes bare LF line ends, joins folded
// lines, lets Transfer-Encoding win over Content-Length, ignores
// Transfer-Encoding on HTTP/1.0); a request this reader accepts, net/http
// accepts the same way (FuzzReadRequestDifferential checks it).
//
// Refused with 400 and the connection closed:
//   - a line ending other than CRLF (a bare LF or a bare CR anywhere in the
//     head, in a chunk line or a trailer);
//   - a request line other than method SP request-target SP HTTP-version
//     (two spaces, a tab), a method that is not a token, a request-target
//     with a byte outside visible ASCII or with a fragment ('#'), "*" with
//     any method but OPTIONS, a CONNECT target that is not host:port;
//   - an absolute-form target (GET http://a/ HTTP/1.1) whose scheme is not
//     http or https or that has userinfo; otherwise its authority is the
//     request's and the Host field is ignored (RFC 9112 section 3.2.2),
//     and it is forwarded in origin-form with that one authority;
//   - no Host field on HTTP/1.1, or two;
//   - a field line starting with a space or a tab (obs-fold: RFC 9112
//     section 5.2 lets a server refuse it rather than join it), a field
//     name that is not a token (whitespace before the colon), a field value
//     with a control character;
//   - Content-Length and Transfer-Encoding together; Content-Length twice
//     (even with equal values), or one that is not 1*DIGIT without leading
//     zeros; Transfer-Encoding on HTTP/1.0; Transfer-Encoding in which
//     chunked is not the one and only coding;
//   - in a chunked body: a chunk size over 15 hex digits or not hex, a
//     chunk extension that is not name[=token|quoted-string], a chunk line
//     over maxChunkLine, extensions over maxChunkExtBytes in one body, data
//     not followed by CRLF, trailers over maxTrailerBytes or naming a field
//     that frames or routes the message.
//
// Refused otherwise: a head over MaxHeaderBytes or with over
// MaxHeaderFields fields (431), an HTTP version other than 1.0 and 1.1
// (505), a transfer coding other than chunked (501), and a body that does
// not arrive within the body read timeout (408).

// Limits on request heads, as Envoy's defaults: a larger head gets 431.
const (
	MaxHeaderBytes  = 60 << 10
	MaxHeaderFields = 100
)

// Limits of chunked request bodies.
const (
	// maxChunkLine bounds a chunk-size line, extensions included.
	maxChunkLine = 4 << 10
	// maxChunkExtBytes bounds the chunk extensions of one body, which
	// carry nothing a proxy uses and cost a read each.
	maxChunkExtBytes = 16 << 10
	// maxTrailerBytes bounds the trailer section of a chunked body.
	maxTrailerBytes = 16 << 10
)

// ProtocolError is a request the reader or the server refuses: the status
// to answer and why, and the reason label of the rejection counter.
type ProtocolError struct {
	Status int
	Reason string // a short fixed label: "framing", "request_line", ...
	Msg    string
}

func (e *ProtocolError) Error() string { return e.Msg }

// ReasonNotHTTP labels a connection whose first line is neither HTTP/1.x
// nor the HTTP/2 preface: it is closed without an answer.
const ReasonNotHTTP = "not_http"

func refused(status int, reason, msg string) *ProtocolError {
	return &ProtocolError{Status: status, Reason: reason, Msg: msg}
}

// readLine reads one CRLF-terminated line from br and returns it without
// the CRLF; the slice is valid until the next read on br. A bare LF ends
// nothing: it is refused, as is a CR anywhere but before the LF. Lines
// longer than br's buffer are gathered in *scratch, up to limit bytes.
func readLine(br *bufio.Reader, scratch *[]byte, limit int, where string) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		buf := append((*scratch)[:0], line...)
		for err == bufio.ErrBufferFull {
			if len(buf) > limit {
				return nil, refused(http.StatusRequestHeaderFieldsTooLarge, "too_large", where+" too long")
			}
			line, err = br.ReadSlice('\n')
			buf = append(buf, line...)
		}
		*scratch = buf
		line = buf
	}
	if err != nil {
		if err == io.EOF && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if len(line) > limit+2 {
		return nil, refused(http.StatusRequestHeaderFieldsTooLarge, "too_large", where+" too long")
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, refused(http.StatusBadRequest, "line_ending", "bare LF in "+where+": lines end with CRLF")
	}
	line = line[:len(line)-2]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, refused(http.StatusBadRequest, "line_ending", "bare CR in "+where)
	}
	return line, nil
}

// ReadRequest reads a request head from br and sets up its body, which
// reads from br. The errors it returns are a *ProtocolError for a request
// refused, or the read's error (io.EOF before any byte: the client closed).
// forbidTrailer, if not nil, names the fields a chunked body's trailers may
// not carry beyond those that frame, route or authorize a message (which
// are always refused): the user's own, such as a proxy's internal fields.
func ReadRequest(br *bufio.Reader, forbidTrailer func(name string) bool) (*http.Request, error) {
	return readRequest(context.Background(), br, forbidTrailer, nil)
}

// readRequest is ReadRequest for a request of context ctx, taking the
// strings of the request line and the field values that equal the last
// request's on the connection from kept (nil keeps nothing).
func readRequest(ctx context.Context, br *bufio.Reader, forbidTrailer func(name string) bool, kept *keptStrings) (*http.Request, error) {
	var scratch []byte
	line, err := readLine(br, &scratch, MaxHeaderBytes, "the request line")
	if err != nil {
		return nil, err
	}
	var head http.Request // on the stack: WithContext makes the one request
	if err := parseRequestLine(kept.get(0, line), &head); err != nil {
		return nil, err
	}
	req := head.WithContext(ctx)
	h, err := readFields(br, &scratch, MaxHeaderBytes, MaxHeaderFields, "the header section", kept)
	if err != nil {
		return nil, err
	}
	req.Header = h
	if err := finishRequest(req, br, forbidTrailer); err != nil {
		return nil, err
	}
	return req, nil
}

// finishRequest completes a request whose line and fields were read: its
// one authority, whether the connection ends after it, its body.
func finishRequest(req *http.Request, br *bufio.Reader, forbidTrailer func(string) bool) error {
	if err := setHost(req); err != nil {
		return err
	}
	req.Close = shouldClose(req)
	return frameBody(req, br, forbidTrailer)
}

// parseRequestLine parses "method SP request-target SP HTTP-version"
// into req.
func parseRequestLine(s string, req *http.Request) error {
	method, target, proto, major, minor, err := splitRequestLine(s)
	if err != nil {
		return err
	}
	u, err := parseTarget(method, target)
	if err != nil {
		return err
	}
	req.Method, req.RequestURI, req.Proto, req.ProtoMajor, req.ProtoMinor, req.URL = method, target, proto, major, minor, u
	return nil
}

// splitRequestLine checks a request line's parts and its HTTP version.
func splitRequestLine(s string) (method, target, proto string, major, minor int, err error) {
	bad := func(msg string) error { return refused(http.StatusBadRequest, "request_line", msg) }
	method, rest, ok1 := strings.Cut(s, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || strings.ContainsAny(proto, " \t") {
		return "", "", "", 0, 0, bad("malformed request line: want method SP target SP version, single spaces")
	}
	if method == "" || !isToken(method) {
		return "", "", "", 0, 0, bad("invalid method in the request line")
	}
	if target == "" {
		return "", "", "", 0, 0, bad("empty request target")
	}
	for i := 0; i < len(target); i++ {
		switch c := target[i]; {
		case c <= ' ' || c >= 0x7f:
			return "", "", "", 0, 0, bad("a byte outside visible ASCII in the request target (at offset " + strconv.Itoa(i) + ")")
		case c == '#':
			return "", "", "", 0, 0, bad("a fragment (#) in the request target")
		}
	}
	switch proto {
	case "HTTP/1.1":
		return method, target, proto, 1, 1, nil
	case "HTTP/1.0":
		return method, target, proto, 1, 0, nil
	}
	if len(proto) == 8 && strings.HasPrefix(proto, "HTTP/") && isDigit(proto[5]) && proto[6] == '.' && isDigit(proto[7]) {
		return "", "", "", 0, 0, refused(http.StatusHTTPVersionNotSupported, "version", "HTTP version "+proto[5:]+" not supported: HTTP/1.0 and HTTP/1.1 only")
	}
	if len(proto) >= 5 && strings.EqualFold(proto[:5], "HTTP/") {
		return "", "", "", 0, 0, bad("malformed HTTP version")
	}
	// Not HTTP/1 at all, nor the HTTP/2 preface (the server checks
	// for it first): a peer speaking neither gets no HTTP/1.1 answer
	// it could not read, only the close (RFC 9113 section 3.4).
	return "", "", "", 0, 0, refused(http.StatusBadRequest, ReasonNotHTTP, "not an HTTP/1.x request line nor the HTTP/2 preface")
}

// parseTarget parses a request target (its bytes checked) by its form.
func parseTarget(method, target string) (*url.URL, error) {
	bad := func(msg string) error { return refused(http.StatusBadRequest, "request_line", msg) }
	switch {
	case target == "*":
		if method != http.MethodOptions {
			return nil, bad("the asterisk-form target (*) is for OPTIONS only")
		}
		return &url.URL{Path: "*"}, nil
	case method == http.MethodConnect:
		// authority-form: host:port and nothing else.
		host, port, err := splitHostPort(target)
		if err != nil || host == "" || port == "" || strings.ContainsAny(target, "/?@") {
			return nil, bad("a CONNECT target must be host:port")
		}
		return &url.URL{Host: target}, nil
	case target[0] == '/':
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return nil, bad("malformed request target")
		}
		return u, nil
	}
	u, err := url.ParseRequestURI(target)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return nil, bad("malformed request target: want /path, an absolute http(s) URI, or *")
	}
	if s := strings.ToLower(u.Scheme); s != "http" && s != "https" {
		return nil, bad("absolute-form target with scheme " + u.Scheme + ": http or https only")
	}
	if u.User != nil {
		return nil, bad("userinfo in the request target")
	}
	return u, nil
}

// readFields reads field lines up to the empty line ending them: the
// header section (limit bytes and n fields, as Server's limits) or a
// chunked body's trailers.
func readFields(br *bufio.Reader, scratch *[]byte, limit, n int, where string, kept *keptStrings) (http.Header, error) {
	// One backing array holds the first value of every field, as
	// net/textproto does, sized by the lines already buffered.
	hint := min(upcomingLines(br), n)
	h := make(http.Header, hint)
	values := make([]string, 0, hint)
	err := scanFields(br, scratch, limit, n, where, func(count int, name, v []byte) error {
		k := canonicalKey(name)
		value := kept.get(count, v)
		if !httpguts.ValidHeaderFieldValue(value) {
			return refused(http.StatusBadRequest, "field", "a control character in the value of "+k)
		}
		if vv, ok := h[k]; ok || len(values) == cap(values) {
			h[k] = append(vv, value)
		} else {
			values = append(values, value)
			h[k] = values[len(values)-1 : len(values) : len(values)]
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return h, nil
}

// scanFields reads field lines up to the empty line ending them, within
// limit bytes and n fields, refusing what readFields refuses, and gives
// add each field's name (a token) and value (trimmed, not yet checked)
// and its place (from 1).
func scanFields(br *bufio.Reader, scratch *[]byte, limit, n int, where string, add func(count int, name, value []byte) error) error {
	size, count := 0, 0
	for {
		line, err := readLine(br, scratch, limit, where)
		if err != nil {
			return err
		}
		if len(line) == 0 {
			return nil
		}
		if size += len(line) + 2; size > limit {
			return refused(http.StatusRequestHeaderFieldsTooLarge, "too_large", where+" over "+strconv.Itoa(limit>>10)+" KiB")
		}
		if count++; count > n {
			return refused(http.StatusRequestHeaderFieldsTooLarge, "too_large", where+" has over "+strconv.Itoa(n)+" fields")
		}
		if line[0] == ' ' || line[0] == '\t' {
			return refused(http.StatusBadRequest, "obs_fold", "a folded field line (obs-fold) in "+where)
		}
		i := bytes.IndexByte(line, ':')
		if i <= 0 {
			return refused(http.StatusBadRequest, "field", "a field line without a name and a colon in "+where)
		}
		if !isTokenBytes(line[:i]) {
			return refused(http.StatusBadRequest, "field", "invalid field name "+quoteShort(string(line[:i]))+" in "+where+" (no whitespace before the colon)")
		}
		if err := add(count, line[:i], bytes.Trim(line[i+1:], " \t")); err != nil {
			return err
		}
	}
}

// keptStrings holds, for one connection, the request line and the field
// values of its last request by position. A keep-alive client sends much
// the same head every time (the same Host, User-Agent, Accept and so on),
// and a line equal to the last one's at its place is given the string
// made then instead of a new copy of the buffer's bytes: one allocation
// less per such line. Strings are immutable, so sharing one with an
// earlier request changes nothing the handlers see. It keeps short lines
// only, and no more than keptLines of them, so that an idle connection
// holds at most a few KiB.
type keptStrings struct {
	s     [keptLines]string
	names [keptLines]string // lowercase field names (name)
}

const (
	keptLines     = 32
	maxKeptString = 128
)

// get returns b as a string, the kept one for line i if it is equal.
func (k *keptStrings) get(i int, b []byte) string {
	if k == nil || i >= keptLines {
		return string(b)
	}
	if s := k.s[i]; s == string(b) { // compared without a copy
		return s
	}
	s := string(b)
	if len(s) > maxKeptString {
		k.s[i] = ""
	} else {
		k.s[i] = s
	}
	return s
}

// name returns the field name b in lowercase, the kept one for line i
// if it is the same name: field names repeat line by line from one
// response to the next.
func (k *keptStrings) name(i int, b []byte) string {
	var buf [64]byte
	if len(b) > len(buf) {
		return string(bytes.ToLower(b))
	}
	lower := buf[:len(b)]
	for j, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[j] = c
	}
	if k == nil || i >= keptLines {
		return string(lower)
	}
	if s := k.names[i]; s == string(lower) { // compared without a copy
		return s
	}
	s := string(lower)
	k.names[i] = s
	return s
}

// upcomingLines counts the lines already buffered in br, a bound on the
// fields to come.
func upcomingLines(br *bufio.Reader) int {
	b, _ := br.Peek(br.Buffered())
	return bytes.Count(b, []byte{'\n'})
}

// canonicalKey returns the canonical form of a field name (a token), as
// textproto.CanonicalMIMEHeaderKey does; the names most requests carry
// come from a table, without a copy.
func canonicalKey[T string | []byte](name T) string {
	var buf [32]byte
	if len(name) > len(buf) {
		return textproto.CanonicalMIMEHeaderKey(string(name))
	}
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case upper && 'a' <= c && c <= 'z':
			c -= 'a' - 'A'
		case !upper && 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		buf[i] = c
		upper = c == '-'
	}
	canon := buf[:len(name)]
	if k, ok := commonKeys[string(canon)]; ok {
		return k
	}
	return string(canon)
}

// commonKeys are field names that most requests carry.
var commonKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Authorization",
		"Cache-Control", "Connection", "Content-Encoding", "Content-Length", "Content-Type",
		"Cookie", "Expect", "Forwarded", "Host", "If-Match", "If-Modified-Since", "If-None-Match",
		"Keep-Alive", "Origin", "Pragma", "Range", "Referer", "Te", "Traceparent", "Tracestate",
		"Transfer-Encoding", "Upgrade", "User-Agent", "X-Forwarded-For", "X-Forwarded-Host",
		"X-Forwarded-Proto", "X-Real-Ip", "X-Request-Id", "Sec-Websocket-Key", "Sec-Websocket-Version",
	} {
		m[k] = k
	}
	return m
}()

// setHost takes the request's authority from its Host field, which
// HTTP/1.1 requires once, or from an absolute-form target, whose authority
// wins over the Host field (RFC 9112 section 3.2.2); the target then
// becomes origin-form, so that nothing after this sees two authorities.
func setHost(req *http.Request) error {
	hosts := req.Header["Host"]
	delete(req.Header, "Host")
	switch {
	case len(hosts) > 1:
		return refused(http.StatusBadRequest, "host", "more than one Host field")
	case len(hosts) == 0 && req.ProtoAtLeast(1, 1):
		return refused(http.StatusBadRequest, "host", "missing required Host header")
	case len(hosts) == 1 && hosts[0] == "" && req.ProtoAtLeast(1, 1):
		return refused(http.StatusBadRequest, "host", "empty Host field")
	case len(hosts) == 1:
		req.Host = hosts[0]
		if !httpguts.ValidHostHeader(req.Host) {
			return refused(http.StatusBadRequest, "host", "malformed Host field")
		}
	}
	if req.Method == http.MethodConnect {
		if req.Host != "" && !strings.EqualFold(req.Host, req.URL.Host) {
			return refused(http.StatusBadRequest, "host", "the CONNECT target is not the Host field")
		}
		req.Host = req.URL.Host
		return nil
	}
	if u := req.URL; u.Host != "" {
		if !httpguts.ValidHostHeader(u.Host) {
			return refused(http.StatusBadRequest, "host", "malformed authority in the request target")
		}
		req.Host = u.Host
		u.Scheme, u.Host = "", ""
		if u.Path == "" {
			u.Path, u.RawPath = "/", ""
		}
		req.RequestURI = u.RequestURI()
	}
	return nil
}

// shouldClose reports whether the connection ends after this request:
// "Connection: close", or HTTP/1.0 without "Connection: keep-alive" (RFC
// 9112 section 9.3).
func shouldClose(req *http.Request) bool {
	conn := req.Header["Connection"]
	if httpguts.HeaderValuesContainsToken(conn, "close") {
		return true
	}
	return !req.ProtoAtLeast(1, 1) && !httpguts.HeaderValuesContainsToken(conn, "keep-alive")
}

// frameBody decides the body's length (RFC 9112 section 6.3, refusing
// every case the RFC leaves to judgement) and sets the body reader.
func frameBody(req *http.Request, br *bufio.Reader, forbidTrailer func(string) bool) error {
	bad := func(msg string) error { return refused(http.StatusBadRequest, "framing", msg) }
	te, hasTE := req.Header["Transfer-Encoding"]
	cl, hasCL := req.Header["Content-Length"]
	switch {
	case hasTE && hasCL:
		return bad("both Transfer-Encoding and Content-Length")
	case hasTE && !req.ProtoAtLeast(1, 1):
		return bad("Transfer-Encoding in an HTTP/1.0 request")
	case hasTE:
		var codings []string
		for _, v := range te {
			for _, c := range strings.Split(v, ",") {
				codings = append(codings, strings.ToLower(textproto.TrimString(c)))
			}
		}
		for _, c := range codings {
			if c != "chunked" && c != "" {
				return refused(http.StatusNotImplemented, "framing", "transfer coding "+quoteShort(c)+" not implemented: chunked only")
			}
		}
		if len(codings) != 1 || codings[0] != "chunked" {
			return bad("Transfer-Encoding must be chunked, once")
		}
		delete(req.Header, "Transfer-Encoding")
		req.TransferEncoding = []string{"chunked"}
		req.ContentLength = -1
		t, err := declaredRequestTrailers(req.Header, forbidTrailer)
		if err != nil {
			return err
		}
		req.Trailer = t
		req.Body = &chunkedBody{br: br, trailer: &req.Trailer, forbid: forbidTrailer}
		return nil
	case hasCL:
		if len(cl) != 1 {
			return bad("more than one Content-Length")
		}
		n, ok := parseContentLength(cl[0])
		if !ok {
			return bad("invalid Content-Length " + quoteShort(cl[0]) + ": digits only, no sign, no leading zeros")
		}
		req.ContentLength = n
		if n == 0 {
			req.Body = http.NoBody
		} else {
			req.Body = &lengthBody{br: br, n: n}
		}
		return nil
	}
	req.Body = http.NoBody
	return nil
}

// parseContentLength parses 1*DIGIT without leading zeros, up to 18 digits.
func parseContentLength(s string) (int64, bool) {
	if s == "" || len(s) > 18 || len(s) > 1 && s[0] == '0' {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, false
		}
		n = n*10 + int64(s[i]-'0')
	}
	return n, true
}

// declaredRequestTrailers is the trailer map a Trailer field announces;
// fields that frame or route a message cannot be trailers.
func declaredRequestTrailers(h http.Header, forbid func(string) bool) (http.Header, error) {
	vv, ok := h["Trailer"]
	if !ok {
		return nil, nil
	}
	delete(h, "Trailer")
	t := http.Header{}
	for _, v := range vv {
		for _, k := range strings.Split(v, ",") {
			k = textproto.TrimString(k)
			if k == "" {
				continue
			}
			if !isToken(k) {
				return nil, refused(http.StatusBadRequest, "framing", "invalid field name in Trailer")
			}
			k = textproto.CanonicalMIMEHeaderKey(k)
			if forbiddenTrailer(k, forbid) {
				return nil, refused(http.StatusBadRequest, "framing", k+" cannot be a trailer")
			}
			t[k] = nil
		}
	}
	return t, nil
}

// forbiddenTrailer reports whether a field frames, routes or authorizes a
// message, and so may not come after its body (RFC 9110 section 6.5.1),
// or is one that forbid (ReadRequest's) names.
func forbiddenTrailer(k string, forbid func(string) bool) bool {
	switch k {
	case "Transfer-Encoding", "Content-Length", "Trailer", "Host", "Connection", "Te",
		"Upgrade", "Keep-Alive", "Proxy-Connection", "Content-Type", "Content-Encoding",
		"Content-Range", "Authorization", "Cookie", "Expect", "Max-Forwards", "Cache-Control":
		return true
	}
	return forbid != nil && forbid(k)
}

// lengthBody is a body of Content-Length bytes.
type lengthBody struct {
	br *bufio.Reader
	n  int64
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.br.Read(p)
	b.n -= int64(n)
	if b.n > 0 && err == io.EOF {
		err = io.ErrUnexpectedEOF // the client closed with the body short
	}
	if b.n == 0 && err == nil {
		err = io.EOF
	}
	return n, err
}

func (b *lengthBody) Close() error { return nil }

// chunkedBody reads a chunked body (RFC 9112 section 7.1) strictly: the
// errors of a malformed one are *ProtocolError.
type chunkedBody struct {
	br      *bufio.Reader
	trailer *http.Header
	forbid  func(string) bool // ReadRequest's forbidTrailer
	left    int64             // data left in the current chunk
	inChunk bool
	extSize int
	err     error // sticky
	scratch []byte
}

func (b *chunkedBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.read(p)
	if err != nil {
		if err == io.EOF && !b.done() {
			err = io.ErrUnexpectedEOF
		}
		b.err = err
	}
	return n, err
}

func (b *chunkedBody) done() bool { return b.left < 0 }

func (b *chunkedBody) read(p []byte) (int, error) {
	if b.done() {
		return 0, io.EOF
	}
	if !b.inChunk {
		size, err := b.chunkHeader()
		if err != nil {
			return 0, err
		}
		if size == 0 {
			if err := b.readTrailers(); err != nil {
				return 0, err
			}
			b.left = -1
			return 0, io.EOF
		}
		b.left, b.inChunk = size, true
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if err != nil {
		return n, err
	}
	if b.left == 0 {
		// The data ends with CRLF, exactly.
		crlf, err := b.br.Peek(2)
		if err != nil {
			if n > 0 && len(crlf) < 2 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return n, err
		}
		if crlf[0] != '\r' || crlf[1] != '\n' {
			return n, refused(http.StatusBadRequest, "framing", "chunk data not followed by CRLF")
		}
		b.br.Discard(2)
		b.inChunk = false
	}
	return n, nil
}

// chunkHeader reads a chunk-size line: 1*HEXDIG, then chunk extensions
// (name[=token|quoted-string], blanks around ';' and '='), which are
// checked and dropped.
func (b *chunkedBody) chunkHeader() (int64, error) {
	bad := func(msg string) error { return refused(http.StatusBadRequest, "framing", msg) }
	line, err := readLine(b.br, &b.scratch, maxChunkLine, "a chunk-size line")
	if err != nil {
		var pe *ProtocolError
		if errors.As(err, &pe) {
			pe.Status, pe.Reason = http.StatusBadRequest, "framing"
		}
		return 0, err
	}
	i := 0
	for i < len(line) && unhex(line[i]) >= 0 {
		i++
	}
	switch {
	case i == 0:
		return 0, bad("chunk size is not hexadecimal")
	case i > 15:
		return 0, bad("chunk size over 15 hex digits")
	}
	var size int64
	for _, c := range line[:i] {
		size = size<<4 | int64(unhex(c))
	}
	ext := line[i:]
	if b.extSize += len(ext); b.extSize > maxChunkExtBytes {
		return 0, bad("chunk extensions over " + strconv.Itoa(maxChunkExtBytes>>10) + " KiB in one body")
	}
	if !validChunkExt(ext) {
		return 0, bad("malformed chunk extension")
	}
	return size, nil
}

// validChunkExt checks *( BWS ";" BWS name [ BWS "=" BWS ( token /
// quoted-string ) ] ).
func validChunkExt(s []byte) bool {
	i := 0
	ws := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
	}
	tok := func() bool {
		j := i
		for i < len(s) && httpguts.IsTokenRune(rune(s[i])) {
			i++
		}
		return i > j
	}
	for {
		ws()
		if i == len(s) {
			return true
		}
		if s[i] != ';' {
			return false
		}
		i++
		ws()
		if !tok() {
			return false
		}
		ws()
		if i == len(s) || s[i] == ';' {
			continue
		}
		if s[i] != '=' {
			return false
		}
		i++
		ws()
		if i < len(s) && s[i] == '"' {
			i++
			for {
				if i == len(s) {
					return false // unterminated
				}
				c := s[i]
				i++
				if c == '"' {
					break
				}
				if c == '\\' {
					if i == len(s) || !qdtext(s[i]) && s[i] != '"' && s[i] != '\\' {
						return false
					}
					i++
					continue
				}
				if !qdtext(c) {
					return false
				}
			}
		} else if !tok() {
			return false
		}
	}
}

// qdtext is a byte allowed in a quoted-string as itself (RFC 9110 section
// 5.6.4), '"' and '\' aside.
func qdtext(c byte) bool {
	return c == '\t' || c == ' ' || c == 0x21 || 0x23 <= c && c <= 0x5b || 0x5d <= c && c <= 0x7e || c >= 0x80
}

// readTrailers reads the trailer section after the last chunk into the
// request's Trailer map.
func (b *chunkedBody) readTrailers() error {
	t, err := readFields(b.br, &b.scratch, maxTrailerBytes, MaxHeaderFields, "the trailer section", nil)
	if err != nil {
		var pe *ProtocolError
		if errors.As(err, &pe) {
			pe.Status, pe.Reason = http.StatusBadRequest, "framing"
		}
		return err
	}
	for k, vv := range t {
		if forbiddenTrailer(k, b.forbid) {
			return refused(http.StatusBadRequest, "framing", k+" in the trailer section")
		}
		if *b.trailer == nil {
			*b.trailer = http.Header{}
		}
		(*b.trailer)[k] = vv
	}
	return nil
}

func (b *chunkedBody) Close() error { return nil }

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isTokenBytes(b []byte) bool {
	for _, c := range b {
		if !httpguts.IsTokenRune(rune(c)) {
			return false
		}
	}
	return len(b) > 0
}

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if !httpguts.IsTokenRune(rune(s[i])) {
			return false
		}
	}
	return s != ""
}

// splitHostPort splits host:port ([v6]:port) without net's leniency.
func splitHostPort(s string) (string, string, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", "", errors.New("no port")
	}
	host, port := s[:i], s[i+1:]
	if strings.HasPrefix(host, "[") {
		if !strings.HasSuffix(host, "]") {
			return "", "", errors.New("malformed IPv6 literal")
		}
	} else if strings.ContainsAny(host, "[]:") {
		return "", "", errors.New("malformed host")
	}
	for i := 0; i < len(port); i++ {
		if !isDigit(port[i]) {
			return "", "", errors.New("malformed port")
		}
	}
	return host, port, nil
}

// unhex is the value of a hexadecimal digit, or -1.
func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// quoteShort quotes what a client sent for a message, cut to 32 bytes.
func quoteShort(s string) string {
	if len(s) > 32 {
		return strconv.Quote(s[:32]) + "..."
	}
	return strconv.Quote(s)
}

// cut is s up to n bytes, for a log line: a client picks its length.
func cut(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
