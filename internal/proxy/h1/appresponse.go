package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"

	"golang.org/x/net/http2/hpack"
)

// An app's answers to a proxy are nearly all alike: an HTTP/1.1 status
// line, a few fields and a Content-Length, the whole head in one read.
// readResponse reads such a head itself, into one allocation for the
// response, its body and the app client's wrapper (appBody), and its
// field values shared with the last response's on the connection
// (keptStrings); any other head goes to http.ReadResponse, untouched.
// What the short way accepts it reads exactly as http.ReadResponse does
// (FuzzReadResponseDifferential): it declines anything where the two
// could differ, rather than decide such a case itself.

// appResponse is a response read the short way, with its body and its
// appBody. Its head is in fields; the http.Response's Header is made of
// them only for RoundTrip.
type appResponse struct {
	http.Response
	fields Response
	body   lengthResponseBody
	app    appBody
}

// Response is an app's response as RoundTripFields gives it: its head as
// HTTP/2 header fields, names in lowercase and in the order the app sent
// them, which a proxy relays as they are. Connection, Transfer-Encoding
// and Trailer are never among them (such a head is read by net/http).
type Response struct {
	StatusCode int
	Fields     []hpack.HeaderField
	// ContentLength is the body's length; it is also among Fields.
	ContentLength int64
	Body          io.ReadCloser
}

// errNoResponse is a connection that ended before any byte of the
// response: io.ErrUnexpectedEOF, as net/http says, and also io.EOF, as
// Client.RoundTrip asks whether the app closed a kept connection
// before it saw the request.
var errNoResponse error = noResponse{}

type noResponse struct{}

func (noResponse) Error() string { return io.ErrUnexpectedEOF.Error() }

func (noResponse) Is(target error) bool { return target == io.ErrUnexpectedEOF || target == io.EOF }

// readResponse reads the app's response to req from br, as
// http.ReadResponse does. kept is the connection's (nil keeps nothing).
// With the short way, ar is the response's appResponse (its app field
// free for the caller), else nil.
func readResponse(br *bufio.Reader, req *http.Request, kept *keptStrings) (resp *http.Response, ar *appResponse, err error) {
	resp, ar, err = readResponseFields(br, req, kept)
	if ar != nil {
		ar.Header = fieldsHeader(ar.fields.Fields)
	}
	return resp, ar, err
}

// readResponseFields is readResponse without the Header of a response
// read the short way: its head is in ar.fields.
func readResponseFields(br *bufio.Reader, req *http.Request, kept *keptStrings) (resp *http.Response, ar *appResponse, err error) {
	if _, err := br.Peek(1); err != nil {
		// Nothing came: the error http.ReadResponse returns then, without
		// a second read of a connection that failed; and one the client
		// can tell from a response cut short (errNoResponse).
		if err == io.EOF {
			err = errNoResponse
		}
		return nil, nil, err
	}
	if ar := readSimpleResponse(br, req, kept); ar != nil {
		return &ar.Response, ar, nil
	}
	conn := bufferedConnection(br)
	resp, err = http.ReadResponse(br, req)
	if err == nil && resp.Close && len(conn) > 0 && resp.Header["Connection"] == nil {
		// net/http drops a Connection field that says "close", and with
		// it the other fields it names as the hop's (RFC 9110 section
		// 7.6.1): a proxy needs them to drop those fields too.
		resp.Header["Connection"] = conn
	}
	return resp, nil, err
}

// bufferedConnection returns the values of the Connection fields of the
// response head at the start of br's buffer, when all of the head is
// there (a head larger than the buffer is not looked at).
func bufferedConnection(br *bufio.Reader) []string {
	b, _ := br.Peek(br.Buffered())
	var vals []string
	inConn := false
	for first := true; ; first = false {
		nl := bytes.IndexByte(b, '\n')
		if nl < 0 {
			return nil // not all here
		}
		line := bytes.TrimSuffix(b[:nl], []byte("\r"))
		b = b[nl+1:]
		switch {
		case len(line) == 0:
			return vals
		case first:
		case line[0] == ' ' || line[0] == '\t':
			if inConn { // obs-fold: the value goes on
				vals[len(vals)-1] += " " + string(bytes.TrimSpace(line))
				continue
			}
		case len(line) >= 11 && line[10] == ':' && bytes.EqualFold(line[:10], []byte("connection")):
			vals = append(vals, string(bytes.TrimSpace(line[11:])))
			inConn = true
			continue
		}
		inConn = false
	}
}

// maxSimpleFields bounds the fields of a head read the short way.
const maxSimpleFields = 64

// readSimpleResponse reads the response head buffered in br if it is one
// the short way takes, and consumes it and nothing else; otherwise it
// returns nil with br as it was.
func readSimpleResponse(br *bufio.Reader, req *http.Request, kept *keptStrings) *appResponse {
	if req == nil || req.Method == http.MethodHead {
		return nil // no body whatever the length says: net/http's rules
	}
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 {
		return nil // not all here: the general reader waits for it
	}
	head := buf[:end+2] // each line with its CRLF
	nl := bytes.Index(head, []byte("\r\n"))
	status := head[:nl]
	// "HTTP/1.1 " three digits, then nothing or a space and the reason.
	if len(status) < 12 || string(status[:9]) != "HTTP/1.1 " || !isDigit(status[9]) || !isDigit(status[10]) || !isDigit(status[11]) ||
		len(status) > 12 && status[12] != ' ' || !validLine(status) {
		return nil
	}
	code := int(status[9]-'0')*100 + int(status[10]-'0')*10 + int(status[11]-'0')
	if code < 200 || code == http.StatusNoContent || code == http.StatusNotModified {
		return nil // 1xx, and statuses without a body
	}
	rest := head[nl+2:]
	lines := bytes.Count(rest, []byte("\r\n"))
	if lines > maxSimpleFields {
		return nil
	}
	fields := make([]hpack.HeaderField, 0, lines)
	length := int64(-1)
	for i := 1; len(rest) > 0; i++ {
		nl := bytes.Index(rest, []byte("\r\n"))
		line := rest[:nl]
		rest = rest[nl+2:]
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isTokenBytes(line[:colon]) || !validLine(line) {
			return nil // obs-fold, no name, a bad byte: the general reader's call
		}
		k := kept.name(i, line[:colon])
		switch k {
		case "transfer-encoding", "connection", "trailer", "pragma":
			return nil // framing, connection and header rewrites: net/http's rules
		}
		v := bytes.Trim(line[colon+1:], " \t")
		if k == "content-length" {
			if length >= 0 || len(v) == 0 || len(v) > 18 {
				return nil // repeated, empty, or perhaps too large
			}
			length = 0
			for _, c := range v {
				if !isDigit(c) {
					return nil
				}
				length = length*10 + int64(c-'0')
			}
		}
		fields = append(fields, hpack.HeaderField{Name: k, Value: kept.get(i, v)})
	}
	if length < 0 {
		return nil // a body to the connection's end: net/http's rules
	}
	ar := &appResponse{Response: http.Response{
		Status:        kept.get(0, status[9:]),
		StatusCode:    code,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		ContentLength: length,
		Request:       req,
	}, fields: Response{StatusCode: code, Fields: fields, ContentLength: length}}
	// Only now is the head taken from br: an earlier refusal left it for
	// http.ReadResponse.
	br.Discard(end + 4)
	if length == 0 {
		ar.Body = http.NoBody
	} else {
		ar.body = lengthResponseBody{r: br, left: length}
		ar.Body = &ar.body
	}
	return ar
}

// fieldsHeader makes the http.Header of a head's fields.
func fieldsHeader(fields []hpack.HeaderField) http.Header {
	h := make(http.Header, len(fields))
	// One array holds the values: a slice per name would cost an
	// allocation per field. A repeated name grows its own slice.
	values := make([]string, len(fields))
	for i, f := range fields {
		k := canonicalKey(f.Name)
		if vv, ok := h[k]; ok {
			h[k] = append(vv, f.Value)
			continue
		}
		values[i] = f.Value
		h[k] = values[i : i+1 : i+1]
	}
	return h
}

// validLine reports whether a head line has only bytes a field value may
// have (visible ASCII, space, tab, obs-text), as net/textproto checks.
func validLine(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// lengthResponseBody is a response body of a known length, read as
// net/http's own: the last bytes come with io.EOF, and an end before the
// length is io.ErrUnexpectedEOF.
type lengthResponseBody struct {
	r    io.Reader
	left int64
}

func (b *lengthResponseBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	switch {
	case b.left == 0:
		return n, io.EOF
	case err == io.EOF:
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *lengthResponseBody) Close() error { return nil }
