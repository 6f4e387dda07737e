package h1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/net/http2/hpack"
)

// A head given as fields goes to the client after the Header map's, as
// written; a Content-Length among them frames the body (the handler's
// body is held to learn its length only without one), framing fields
// come from what the writer decided, and a Date among them is the only
// one.
func TestHeadFields(t *testing.T) {
	addr, _ := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Map", "m")
		fields := []hpack.HeaderField{{Name: "x-field", Value: "a"}, {Name: "x-field", Value: "b"},
			{Name: "date", Value: "Mon, 07 Dec 2026 00:00:00 GMT"}, {Name: "connection", Value: "keep-alive"},
			{Name: "transfer-encoding", Value: "gzip"}, {Name: "bad name", Value: "v"}, {Name: "x-sp ", Value: "v"}}
		if r.URL.Path == "/length" {
			fields = append(fields, hpack.HeaderField{Name: "content-length", Value: "5"})
		}
		w.(HeadFieldsWriter).SetHeadFields(fields)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "he")
		w.(http.Flusher).Flush() // the head leaves now: its framing must be known
		io.WriteString(w, "llo")
	}))
	for _, tc := range []struct {
		path string
		want []string
		not  []string
	}{
		{"/length", []string{"HTTP/1.1 201 Created\r\n", "X-Map: m\r\n", "x-field: a\r\nx-field: b\r\ndate: Mon, 07 Dec 2026 00:00:00 GMT\r\n",
			"Content-Length: 5\r\n", "\r\n\r\nhello"}, []string{"chunked", "Date:", "connection:", "gzip", "bad name", "x-sp"}},
		{"/", []string{"HTTP/1.1 201 Created\r\n", "x-field: a\r\nx-field: b\r\n", "Transfer-Encoding: chunked\r\n", "2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"},
			[]string{"Content-Length", "Date:", "gzip", "bad name", "x-sp"}},
	} {
		got := exchange(t, addr, "GET "+tc.path+" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
		rest := got
		for _, w := range tc.want {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Fatalf("%s: reply lacks %q (in order) in:\n%s", tc.path, w, got)
			}
			rest = rest[i+len(w):]
		}
		for _, n := range tc.not {
			if strings.Contains(got, n) {
				t.Fatalf("%s: reply has %q:\n%s", tc.path, n, got)
			}
		}
	}
}

// RoundTripFields gives the usual response's head as lowercase fields in
// the app's order, their names and values shared with the last
// response's on the connection; a head the short way does not take comes
// as net/http read it.
func TestRoundTripFields(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for i := 0; ; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if i < 2 {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nX-B: 2\r\nCONTENT-type: text/plain\r\nX-B: 3\r\nContent-Length: 2\r\n\r\nhi")
			} else {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-C: 1\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
			}
		}
	}()
	a := &Client{Target: l.Addr().String()}
	get := func() (*Response, *http.Response) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+l.Addr().String()+"/", nil)
		fr, resp, err := a.RoundTripFields(req)
		if err != nil {
			t.Fatal(err)
		}
		if (fr == nil) == (resp == nil) {
			t.Fatalf("fields %v, response %v: want one", fr, resp)
		}
		var body io.Reader
		if fr != nil {
			body = fr.Body
		} else {
			body = resp.Body
		}
		if b, err := io.ReadAll(body); err != nil || string(b) != "hi" {
			t.Fatalf("body %q, %v", b, err)
		}
		return fr, resp
	}
	first, _ := get()
	want := []hpack.HeaderField{{Name: "x-b", Value: "2"}, {Name: "content-type", Value: "text/plain"},
		{Name: "x-b", Value: "3"}, {Name: "content-length", Value: "2"}}
	if first == nil || first.StatusCode != 200 || first.ContentLength != 2 || !reflect.DeepEqual(first.Fields, want) {
		t.Fatalf("short way: %+v", first)
	}
	second, _ := get()
	if second == nil || unsafe.StringData(second.Fields[1].Name) != unsafe.StringData(first.Fields[1].Name) ||
		unsafe.StringData(second.Fields[1].Value) != unsafe.StringData(first.Fields[1].Value) {
		t.Fatal("the second response's names and values were not shared with the first's")
	}
	if fr, resp := get(); fr != nil || resp.Header.Get("X-C") != "1" {
		t.Fatalf("chunked: fields %+v, response %+v", fr, resp)
	}
}
