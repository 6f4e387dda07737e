package l7

import (
	"bufio"
	"bytes"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"

	"github.com/trellis-mesh/trellis/internal/proxy/h1"
)

// The differential test of Server's HTTP/1.1 reader: the same bytes
// through it and through net/http's (http.ReadRequest and the checks
// net/http's server adds). Trellis may refuse more; whatever it accepts,
// net/http must accept too and read as the same request: method, target,
// authority, version, fields, framing, body, trailers, the close flag,
// and where the next request starts (the byte count each consumed), which
// is where smuggling would show.

// h1Read is what a reader made of a request: what a proxy would forward.
type h1Read struct {
	method, target, authority string
	major, minor              int
	header                    http.Header
	contentLength             int64
	te                        []string
	close                     bool
	body                      string
	trailer                   http.Header
	consumed                  int
}

func readWith(data []byte, read func(*bufio.Reader) (*http.Request, error)) (*h1Read, error) {
	r := bytes.NewReader(data)
	br := bufio.NewReaderSize(r, 4<<10)
	req, err := read(br)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	target := req.URL.RequestURI()
	if req.Method == http.MethodConnect {
		target = req.URL.Host
	}
	return &h1Read{
		method: req.Method, target: target, authority: req.Host,
		major: req.ProtoMajor, minor: req.ProtoMinor, header: req.Header,
		contentLength: req.ContentLength, te: req.TransferEncoding, close: req.Close,
		body: string(body), trailer: req.Trailer,
		consumed: len(data) - r.Len() - br.Buffered(),
	}, nil
}

// netHTTPRead reads a request as net/http's server does.
func netHTTPRead(br *bufio.Reader) (*http.Request, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, err
	}
	if code, msg := netHTTPChecks(req); code != 0 {
		return nil, &h1.ProtocolError{Status: code, Msg: msg}
	}
	delete(req.Header, "Host")
	return req, nil
}

// netHTTPChecks is what net/http's server checks beyond http.ReadRequest
// (which already refuses a second Host): HTTP/1.x only, a Host field from
// HTTP/1.1 on, and valid field names and values.
func netHTTPChecks(r *http.Request) (int, string) {
	switch {
	case r.ProtoMajor != 1:
		return http.StatusHTTPVersionNotSupported, "unsupported protocol version"
	case r.ProtoAtLeast(1, 1) && r.Host == "" && r.Method != http.MethodConnect:
		return http.StatusBadRequest, "missing required Host header"
	case !httpguts.ValidHostHeader(r.Host):
		return http.StatusBadRequest, "malformed Host header"
	}
	for k, vv := range r.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return http.StatusBadRequest, "invalid header name"
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return http.StatusBadRequest, "invalid header value"
			}
		}
	}
	return 0, ""
}

func FuzzReadRequestDifferential(f *testing.F) {
	for _, tc := range h1Cases() {
		if len(tc.req) < 4<<10 { // the large ones only slow the fuzzer's mutations down
			f.Add([]byte(strings.ReplaceAll(tc.req, "HOST", "web")))
		}
	}
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /p?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET",
		"PUT / HTTP/1.0\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi",
		"GET http://a:80/x?y HTTP/1.1\r\nHost: A:80\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\nX:  padded \t\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ours, err := readWith(data, func(br *bufio.Reader) (*http.Request, error) { return h1.ReadRequest(br, meshTrailer) })
		if err != nil {
			return // refused (or incomplete): Trellis may refuse more
		}
		theirs, err := readWith(data, netHTTPRead)
		if err != nil {
			t.Fatalf("Trellis accepts what net/http refuses (%v):\n%q", err, data)
		}
		// net/http adds Cache-Control for Pragma: no-cache (RFC 7234's
		// advice); a proxy forwards what it was sent.
		if _, ok := ours.header["Cache-Control"]; !ok && ours.header.Get("Pragma") == "no-cache" {
			delete(theirs.header, "Cache-Control")
		}
		for _, d := range []struct {
			what         string
			ours, theirs any
			equal        bool
		}{
			{"method", ours.method, theirs.method, ours.method == theirs.method},
			{"target", ours.target, theirs.target, ours.target == theirs.target},
			{"authority", ours.authority, theirs.authority, ours.authority == theirs.authority},
			{"version", [2]int{ours.major, ours.minor}, [2]int{theirs.major, theirs.minor}, ours.major == theirs.major && ours.minor == theirs.minor},
			{"header", ours.header, theirs.header, sameHeader(ours.header, theirs.header)},
			{"content length", ours.contentLength, theirs.contentLength, ours.contentLength == theirs.contentLength},
			{"transfer encoding", ours.te, theirs.te, slices.Equal(ours.te, theirs.te)},
			{"close", ours.close, theirs.close, ours.close == theirs.close},
			{"body", ours.body, theirs.body, ours.body == theirs.body},
			{"trailer", ours.trailer, theirs.trailer, sameHeader(ours.trailer, theirs.trailer)},
			{"bytes consumed", ours.consumed, theirs.consumed, ours.consumed == theirs.consumed},
		} {
			if !d.equal {
				t.Errorf("%s: Trellis read %q, net/http %q, from:\n%q", d.what, d.ours, d.theirs, data)
			}
		}
	})
}

// sameHeader compares headers, nil and empty alike.
func sameHeader(a, b http.Header) bool {
	return maps.EqualFunc(a, b, func(x, y []string) bool { return slices.Equal(x, y) })
}
