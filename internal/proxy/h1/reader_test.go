package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/textproto"
	"strings"
	"testing"
)

// canonicalKey is textproto.CanonicalMIMEHeaderKey for tokens, table or
// not, in any case and length.
func FuzzCanonicalKey(f *testing.F) {
	for _, s := range []string{"host", "X-REQUEST-ID", "content-length", "x_role", "a-", "-a", "sec-websocket-key", strings.Repeat("ab-", 20)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if !isToken(name) {
			return
		}
		if got, want := canonicalKey([]byte(name)), textproto.CanonicalMIMEHeaderKey(name); got != want {
			t.Fatalf("canonicalKey(%q) = %q, want %q", name, got, want)
		}
	})
}

// ReadRequest on arbitrary bytes: it never panics; a refusal is a
// *ProtocolError with a status of 400 or more and a reason label; and a
// field ForbidTrailer names never arrives as a trailer, whatever else the
// reader took. (l7's FuzzReadRequestDifferential checks what it accepts
// against net/http.)
func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-Mesh\r\n\r\n3\r\nabc\r\n0\r\nX-Mesh: 1\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;e=\"q\"\r\nabc\r\n0\r\nX-T: 1\r\nX-Mesh: 2\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
		"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
		"OPTIONS * HTTP/1.0\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	forbid := func(k string) bool { return k == "X-Mesh" }
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), 4<<10)
		req, err := ReadRequest(br, forbid)
		var pe *ProtocolError
		if errors.As(err, &pe) && (pe.Status < 400 || pe.Reason == "" || pe.Msg == "") {
			t.Fatalf("refusal %+v: want a 4xx/5xx status, a reason and a message", pe)
		}
		if err != nil {
			return
		}
		if _, ok := req.Trailer["X-Mesh"]; ok {
			t.Fatalf("a forbidden trailer was declared: %q", data)
		}
		_, err = io.Copy(io.Discard, req.Body)
		if errors.As(err, &pe) && (pe.Status < 400 || pe.Reason == "") {
			t.Fatalf("body refusal %+v: want a 4xx/5xx status and a reason", pe)
		}
		if _, ok := req.Trailer["X-Mesh"]; ok {
			t.Fatalf("a forbidden trailer arrived: %q", data)
		}
	})
}
