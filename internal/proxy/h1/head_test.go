package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// readBoth reads data as the server reads a request when ServeHead is
// set (readHead, then requestHead or toRequest, kept strings from prev)
// and as readRequest reads it alone.
func readBoth(prev, data []byte) (rh *RequestHead, closeAfter bool, got *http.Request, gerr error, want *http.Request, werr error) {
	forbid := func(k string) bool { return k == "X-Mesh" }
	var kept keptStrings
	var h head
	readHead(bufio.NewReader(bytes.NewReader(prev)), &kept, &h)
	br := bufio.NewReaderSize(bytes.NewReader(data), 4<<10)
	if gerr = readHead(br, &kept, &h); gerr == nil {
		if h.simple() {
			rh = &RequestHead{}
			closeAfter, gerr = h.requestHead(rh, br)
		} else {
			got, gerr = h.toRequest(context.Background(), br, forbid)
		}
	}
	want, werr = ReadRequest(bufio.NewReaderSize(bytes.NewReader(data), 4<<10), forbid)
	return
}

// A request read as fields is the request readRequest reads of the same
// bytes, and a refusal the same refusal: a simple head as a RequestHead
// (its fields, Host, framing and whether the connection ends), any other
// as the http.Request toRequest makes, field for field and byte for byte
// of its body.
func FuzzReadHead(f *testing.F) {
	for _, s := range []string{
		"GET /a?b HTTP/1.1\r\nHost: a\r\nUser-Agent: u\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
		"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n",
		"POST /%41 HTTP/1.1\r\nhost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
		"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
		"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 01\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: \r\n\r\n",
	} {
		f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: u\r\n\r\n"), []byte(s))
	}
	f.Fuzz(func(t *testing.T, prev, data []byte) {
		rh, closeAfter, got, gerr, want, werr := readBoth(prev, data)
		if (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() {
			t.Fatalf("error %v, readRequest's %v", gerr, werr)
		}
		var gpe, wpe *ProtocolError
		if errors.As(gerr, &gpe) != errors.As(werr, &wpe) || gpe != nil && *gpe != *wpe {
			t.Fatalf("refusal %+v, readRequest's %+v", gpe, wpe)
		}
		if gerr != nil {
			return
		}
		if rh != nil {
			// What the request would have been.
			got = &http.Request{Method: rh.Method, RequestURI: rh.Target, Host: rh.Host, Close: closeAfter,
				ContentLength: rh.ContentLength, Header: fieldsHeader(rh.Fields), Body: rh.Body}
			if got.Body == nil {
				got.Body = http.NoBody
			}
			if rh.Proto10 != (want.ProtoMinor == 0) || want.URL.Path == "*" || len(rh.Room) != FieldRoom ||
				len(rh.Fields) > 0 && &rh.Room[:FieldRoom+1][FieldRoom] != &rh.Fields[0] {
				t.Fatalf("read as the head %+v of %q", rh, data)
			}
			for _, f := range rh.Fields {
				if f != (hpack.HeaderField{Name: f.Name, Value: f.Value}) || f.Name != string(bytes.ToLower([]byte(f.Name))) {
					t.Fatalf("field %+v: want a lowercase name and nothing more", f)
				}
			}
		} else if got.URL.String() != want.URL.String() || got.Proto != want.Proto ||
			!reflect.DeepEqual(got.TransferEncoding, want.TransferEncoding) {
			t.Fatalf("read as %+v, by readRequest as %+v", got, want)
		}
		if got.Method != want.Method || got.RequestURI != want.RequestURI || got.Host != want.Host ||
			got.Close != want.Close || got.ContentLength != want.ContentLength || !reflect.DeepEqual(got.Header, want.Header) {
			t.Fatalf("read as %+v, by readRequest as %+v", got, want)
		}
		gb, gerr := io.ReadAll(got.Body)
		wb, werr := io.ReadAll(want.Body)
		if !bytes.Equal(gb, wb) || (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() ||
			!reflect.DeepEqual(got.Trailer, want.Trailer) {
			t.Fatalf("body %q (%v, trailers %v), by readRequest %q (%v, trailers %v)", gb, gerr, got.Trailer, wb, werr, want.Trailer)
		}
	})
}

// With ServeHead set, the requests that are a head and a body of known
// length reach it as fields, on the same connection as the others, which
// reach the handler; the answers and the connection's fate are the
// server's as for any request.
func TestServeHeadTakesSimpleRequests(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "handler %s %s %s", r.Method, r.RequestURI, b)
	}), slog.New(slog.DiscardHandler))
	s.ServeHead = func(w http.ResponseWriter, h *RequestHead) {
		var b []byte
		if h.Body != nil {
			b, _ = io.ReadAll(h.Body)
		}
		var fields []string
		for _, f := range h.Fields {
			fields = append(fields, f.Name+"="+f.Value)
		}
		fmt.Fprintf(w, "head %s %s %s %v %s", h.Method, h.Target, h.Host, fields, b)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	got := trellistest.Exchange(t, l.Addr().String(), ""+
		"GET /a?b HTTP/1.1\r\nHost: h\r\nUser-Agent: u\r\n\r\n"+
		"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"+
		"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"+
		"PUT /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz"+
		"GET http://h/abs HTTP/1.1\r\nHost: h\r\n\r\n"+
		"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n"+
		"GET /last HTTP/1.0\r\n\r\n"+
		"GET /never HTTP/1.1\r\nHost: h\r\n\r\n")
	want := []string{
		"head GET /a?b h [user-agent=u] HTTP",
		"head POST /p h [content-length=3] abc",
		"handler POST /c xy",
		"100 Continue", "handler PUT /e z",
		"handler GET /abs ",
		"HTTP/1.1 200 OK\r\nContent-Length: 18\r\n", // HEAD: the length, no body
		"Connection: close\r\n", "head GET /last  [] ",
	}
	rest := got
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("no %q in order in the answers:\n%s", w, got)
		}
		rest = rest[i+len(w):]
	}
	if strings.Contains(got, "/never") || strings.Contains(got, "head HEAD") {
		t.Errorf("answers:\n%s", got)
	}
}
