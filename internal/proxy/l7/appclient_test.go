package l7

import (
	"bufio"
	"bytes"
	"net/http"
	"net/url"
	"reflect"
	"testing"
)

// writeBodiless must put on the wire what req.Write would for the same
// request, as a server reads it.
func TestWriteBodilessAsRequestWrite(t *testing.T) {
	for _, tc := range []struct {
		name, method, uri, host string
		header                  http.Header
	}{
		{"get", "GET", "/a/b?x=1&y=%20", "web", http.Header{"Accept": {"*/*"}, "X-Two": {"1", "2"}}},
		{"no user agent", "GET", "/", "web:8080", http.Header{"User-Agent": {""}}},
		{"own user agent", "HEAD", "/", "web", http.Header{"User-Agent": {"curl/8"}}},
		{"post without body", "POST", "/form", "web", http.Header{"Content-Length": {"0"}}},
		{"delete", "DELETE", "/item/7", "web", nil},
		{"options star", "OPTIONS", "*", "web", nil},
		{"hop fields dropped", "GET", "/", "web", http.Header{"Transfer-Encoding": {"chunked"}, "Trailer": {"X"}}},
		{"value with line break", "GET", "/", "web", http.Header{"X-Odd": {"a\r\nb "}}},
		{"non-ASCII host", "GET", "/", "bücher.example:8080", nil},
		{"IPv6 zone", "GET", "/", "[fe80::1%25eth0]:8080", nil},
		{"no host", "GET", "/", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mk := func() *http.Request {
				u := &url.URL{Path: tc.uri}
				if tc.uri != "*" {
					var err error
					if u, err = url.ParseRequestURI(tc.uri); err != nil {
						t.Fatal(err)
					}
				}
				return &http.Request{Method: tc.method, URL: u, Host: tc.host, Header: tc.header.Clone(), Body: http.NoBody}
			}
			var want, got bytes.Buffer
			if err := mk().Write(&want); err != nil {
				t.Fatal(err)
			}
			bw := bufio.NewWriter(&got)
			if err := writeBodiless(bw, mk()); err != nil {
				t.Fatal(err)
			}
			bw.Flush()
			w, err := http.ReadRequest(bufio.NewReader(&want))
			if err != nil {
				t.Fatal(err)
			}
			g, err := http.ReadRequest(bufio.NewReader(&got))
			if err != nil {
				t.Fatalf("%v in %q", err, got.String())
			}
			if g.Method != w.Method || g.RequestURI != w.RequestURI || g.Host != w.Host || g.ContentLength != w.ContentLength ||
				!reflect.DeepEqual(g.Header, w.Header) {
				t.Errorf("wrote\n%q\nreq.Write writes\n%q", got.String(), want.String())
			}
		})
	}
}

func TestWriteBodilessRefusesBadHost(t *testing.T) {
	req := &http.Request{Method: "GET", URL: &url.URL{Path: "/"}, Host: "web\r\nX-Evil: 1", Header: http.Header{}}
	if err := writeBodiless(bufio.NewWriter(new(bytes.Buffer)), req); err == nil {
		t.Fatal("a Host with CRLF was written")
	}
}
