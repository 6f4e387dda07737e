package h1

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"
)

// Requests as fields. A proxy that sends a request on as HTTP/2 needs its
// head as a list of fields, not as an http.Request: building the header
// map, the url.URL and the request, and then a field list again from
// them, was a tenth of the outbound's work per keep-alive request. When
// Server.ServeHead is set, the server reads each head of a client
// without TLS as fields (readHead) and gives the requests that need
// nothing more than that to ServeHead as a RequestHead; the others
// become the http.Request that readRequest makes of the same bytes
// (toRequest), for the handler. FuzzReadHead holds the two readers to
// the same requests and the same refusals.

// FieldRoom is how many places a RequestHead's field array has free
// before its fields: room for the HTTP/2 pseudo-header fields, so that a
// proxy sends the head without copying the fields.
const FieldRoom = 4

// RequestHead is a request Server read as fields: an origin-form target
// and a body of known length or none. Its strings are the request's own.
type RequestHead struct {
	Ctx    context.Context // ends when the connection does
	Method string
	Target string // as sent: origin-form (an absolute path and a query)
	Host   string // the Host field's value; "" without one (HTTP/1.0)
	// Proto10 is set for an HTTP/1.0 request, clear for HTTP/1.1.
	Proto10 bool
	// Fields are the header fields but Host, in the order they came,
	// their names in lowercase. Room is the FieldRoom places before
	// Fields[0] in the same array, free for the user; Fields has room
	// for a few more after its end.
	Fields, Room []hpack.HeaderField
	// ContentLength is the body's length, 0 when there is none.
	ContentLength int64
	// Body reads the body, nil when there is none. Read it as the
	// handler would an http.Request's.
	Body io.ReadCloser
}

// head is what readHead read: a request line and its fields.
type head struct {
	method, target, proto string
	major, minor          int
	u                     *url.URL // the target parsed, unless origin-form
	all                   []hpack.HeaderField
}

// readHead reads a request head as readRequest does up to its fields,
// with the same refusals in the same order, its fields as HTTP/2 fields
// after FieldRoom free places.
func readHead(br *bufio.Reader, kept *keptStrings, h *head) error {
	var scratch []byte
	line, err := readLine(br, &scratch, MaxHeaderBytes, "the request line")
	if err != nil {
		return err
	}
	*h = head{}
	h.method, h.target, h.proto, h.major, h.minor, err = splitRequestLine(kept.get(0, line))
	if err != nil {
		return err
	}
	if h.target[0] == '/' && h.method != http.MethodConnect {
		// What url.ParseRequestURI refuses of an absolute path (the
		// request line's bytes are checked already): a malformed
		// percent-encoding before the query.
		raw, _, _ := strings.Cut(h.target, "?")
		for i := strings.IndexByte(raw, '%'); i >= 0; i = strings.IndexByte(raw, '%') {
			if i+2 >= len(raw) || unhex(raw[i+1]) < 0 || unhex(raw[i+2]) < 0 {
				return refused(http.StatusBadRequest, "request_line", "malformed request target")
			}
			raw = raw[i+3:]
		}
	} else if h.u, err = parseTarget(h.method, h.target); err != nil {
		return err
	}
	h.all, err = readFieldList(br, &scratch, kept)
	return err
}

// readFieldList reads the header section as readFields does, into a list
// whose first FieldRoom places are left free.
func readFieldList(br *bufio.Reader, scratch *[]byte, kept *keptStrings) ([]hpack.HeaderField, error) {
	hint := min(upcomingLines(br), MaxHeaderFields)
	all := make([]hpack.HeaderField, FieldRoom, FieldRoom+hint+FieldRoom)
	err := scanFields(br, scratch, MaxHeaderBytes, MaxHeaderFields, "the header section", func(count int, name, v []byte) error {
		value := kept.get(count, v)
		if !httpguts.ValidHeaderFieldValue(value) {
			return refused(http.StatusBadRequest, "field", "a control character in the value of "+canonicalKey(name))
		}
		all = append(all, hpack.HeaderField{Name: kept.name(count, name), Value: value})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return all, nil
}

// simple reports whether h is a request RequestHead can carry: an
// origin-form target, no Transfer-Encoding (so no trailers either), and
// nothing the server or the handler must act on beyond the head (Expect,
// an upgrade).
func (h *head) simple() bool {
	if h.u != nil {
		return false
	}
	for _, f := range h.all[FieldRoom:] {
		switch f.Name {
		case "transfer-encoding", "expect", "upgrade":
			return false
		}
	}
	return true
}

// requestHead makes r of a simple head: the Host field and the body's
// framing checked as setHost and frameBody check them. It reports whether
// the connection ends after the request, as shouldClose does.
func (h *head) requestHead(r *RequestHead, br *bufio.Reader) (closeAfter bool, err error) {
	proto11 := h.major == 1 && h.minor == 1
	*r = RequestHead{Method: h.method, Target: h.target, Proto10: !proto11, Room: h.all[:FieldRoom]}
	hosts, cls := 0, 0
	cl := ""
	var conn []string
	for _, f := range h.all[FieldRoom:] {
		switch f.Name {
		case "host":
			if hosts++; hosts == 1 {
				r.Host = f.Value
			}
		case "content-length":
			if cls++; cls == 1 {
				cl = f.Value
			}
		case "connection":
			conn = append(conn, f.Value)
		}
	}
	switch {
	case hosts > 1:
		return false, refused(http.StatusBadRequest, "host", "more than one Host field")
	case hosts == 0 && proto11:
		return false, refused(http.StatusBadRequest, "host", "missing required Host header")
	case hosts == 1 && r.Host == "" && proto11:
		return false, refused(http.StatusBadRequest, "host", "empty Host field")
	case hosts == 1 && !httpguts.ValidHostHeader(r.Host):
		return false, refused(http.StatusBadRequest, "host", "malformed Host field")
	}
	r.Fields = h.all[FieldRoom:]
	if hosts > 0 {
		r.Fields = slices.DeleteFunc(r.Fields, func(f hpack.HeaderField) bool { return f.Name == "host" })
	}
	closeAfter = httpguts.HeaderValuesContainsToken(conn, "close") ||
		!proto11 && !httpguts.HeaderValuesContainsToken(conn, "keep-alive")
	switch {
	case cls > 1:
		return false, refused(http.StatusBadRequest, "framing", "more than one Content-Length")
	case cls == 1:
		n, ok := parseContentLength(cl)
		if !ok {
			return false, refused(http.StatusBadRequest, "framing", "invalid Content-Length "+quoteShort(cl)+": digits only, no sign, no leading zeros")
		}
		if n > 0 {
			r.ContentLength, r.Body = n, &lengthBody{br: br, n: n}
		}
	}
	return closeAfter, nil
}

// toRequest makes the http.Request that readRequest makes of the same
// head.
func (h *head) toRequest(ctx context.Context, br *bufio.Reader, forbidTrailer func(string) bool) (*http.Request, error) {
	var hr http.Request // on the stack: WithContext makes the one request
	hr.Method, hr.RequestURI, hr.Proto, hr.ProtoMajor, hr.ProtoMinor = h.method, h.target, h.proto, h.major, h.minor
	hr.URL = h.u
	if hr.URL == nil {
		u, err := url.ParseRequestURI(h.target)
		if err != nil {
			return nil, refused(http.StatusBadRequest, "request_line", "malformed request target")
		}
		hr.URL = u
	}
	req := hr.WithContext(ctx)
	req.Header = fieldsHeader(h.all[FieldRoom:])
	if err := finishRequest(req, br, forbidTrailer); err != nil {
		return nil, err
	}
	return req, nil
}
