package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"reflect"
	"strings"
	"testing"
	"unsafe"
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

// On one connection, a request line and field values equal to the last
// request's at the same place are the strings read then (no new copy);
// the others are read anew, and every value is the request's own.
func TestReadRequestKeepsRepeatedStrings(t *testing.T) {
	var kept keptStrings
	read := func(head string) *http.Request {
		t.Helper()
		req, err := readRequest(context.Background(), bufio.NewReader(strings.NewReader(head)), nil, &kept)
		if err != nil {
			t.Fatal(err)
		}
		return req
	}
	first := read("GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: agent/1.0\r\nAccept: text/plain\r\n\r\n")
	second := read("GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: agent/1.0\r\nAccept: text/html\r\n\r\n")
	same := func(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }
	if !same(first.RequestURI, second.RequestURI) || !same(first.Header["User-Agent"][0], second.Header["User-Agent"][0]) {
		t.Errorf("the repeated request line and User-Agent were copied again")
	}
	if got := second.Header.Get("Accept"); got != "text/html" {
		t.Errorf("second Accept = %q, want text/html", got)
	}
	if got := first.Header.Get("Accept"); got != "text/plain" {
		t.Errorf("first Accept = %q after the second request, want text/plain", got)
	}
	third := read("POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
	if third.Method != "POST" || third.URL.Path != "/b" || third.Header.Get("Content-Length") != "0" || third.Header.Get("User-Agent") != "" {
		t.Errorf("third request read as %s %s %v", third.Method, third.URL, third.Header)
	}
}

// readRequest with the strings of an earlier request kept reads a
// request exactly as ReadRequest reads it alone.
func FuzzReadRequestKept(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\nAccept: b\r\n\r\n"), []byte("GET / HTTP/1.1\r\nHost: a\r\nAccept: c\r\n\r\n"))
	f.Add([]byte("GET /x HTTP/1.1\r\nHost: a\r\nX: 1\r\nX: 1\r\n\r\n"), []byte("GET /x HTTP/1.1\r\nX: 1\r\nHost: a\r\nX: 2\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"), []byte("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		var kept keptStrings
		readRequest(context.Background(), bufio.NewReader(bytes.NewReader(a)), nil, &kept)
		got, gerr := readRequest(context.Background(), bufio.NewReader(bytes.NewReader(b)), nil, &kept)
		want, werr := ReadRequest(bufio.NewReader(bytes.NewReader(b)), nil)
		if (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() {
			t.Fatalf("error %v, alone %v", gerr, werr)
		}
		if gerr != nil {
			return
		}
		if got.Method != want.Method || got.RequestURI != want.RequestURI || got.Proto != want.Proto ||
			got.Host != want.Host || got.URL.String() != want.URL.String() || got.Close != want.Close ||
			got.ContentLength != want.ContentLength || !reflect.DeepEqual(got.Header, want.Header) {
			t.Fatalf("read as %+v, alone %+v", got, want)
		}
	})
}
