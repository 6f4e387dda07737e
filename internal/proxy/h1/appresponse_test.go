package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// readResponse reads what it reads the short way exactly as
// http.ReadResponse does (head, body, and where the next response
// starts), after any other response on the same connection; whatever it
// declines is http.ReadResponse's anyway.
func FuzzReadResponseDifferential(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 404\r\ncontent-length: 3\r\nX-A: 1\r\nX-A: 2\r\n\r\nabcdef",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na",
		"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
		"HTTP/1.1 200 OK\r\nA: b\r\n c\r\nContent-Length: 1\r\n\r\na",
		"HTTP/1.1 200 OK\nContent-Length: 1\n\na",
		"HTTP/1.1 200 OK\r\nContent-Length:  +1 \r\n\r\na",
		"HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 1\r\n\r\na",
		"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\na",
		"HTTP/1.1 999 Odd\r\nContent-Length: 1\r\n\r\na",
		"HTTP/1.1 200 OK\r\nX: \r\n: v\r\nContent-Length: 1\r\n\r\na",
		"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\na",
		"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 1\r\n\r\na",
		"HTTP/1.1  200 OK\r\nContent-Length: 1\r\n\r\na",
	} {
		f.Add([]byte(s), []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx"), false)
		f.Add([]byte(s), []byte(""), true)
	}
	f.Fuzz(func(t *testing.T, data, before []byte, head bool) {
		req := &http.Request{Method: http.MethodGet}
		if head {
			req.Method = http.MethodHead
		}
		var kept keptStrings
		if len(before) > 0 { // a response before, on the same connection
			resp, _, err := readResponse(bufio.NewReaderSize(bytes.NewReader(before), 4<<10), req, &kept)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
			}
		}
		br := bufio.NewReaderSize(bytes.NewReader(data), 4<<10)
		got, ar, gerr := readResponse(br, req, &kept)
		wbr := bufio.NewReaderSize(bytes.NewReader(data), 4<<10)
		want, werr := http.ReadResponse(wbr, req)
		if ar == nil { // http.ReadResponse's own reading, or the first read's error
			if (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() {
				t.Fatalf("err %v; http.ReadResponse: %v", gerr, werr)
			}
			return
		}
		if gerr != nil || werr != nil {
			t.Fatalf("short way: err %v; http.ReadResponse: %v", gerr, werr)
		}
		if got.Status != want.Status || got.StatusCode != want.StatusCode || got.Proto != want.Proto ||
			got.ProtoMajor != want.ProtoMajor || got.ProtoMinor != want.ProtoMinor ||
			got.ContentLength != want.ContentLength || got.Close != want.Close || got.Uncompressed != want.Uncompressed ||
			!reflect.DeepEqual(got.Header, want.Header) || !reflect.DeepEqual(got.Trailer, want.Trailer) ||
			!reflect.DeepEqual(got.TransferEncoding, want.TransferEncoding) || got.Request != want.Request ||
			(got.Body == http.NoBody) != (want.Body == http.NoBody) {
			t.Fatalf("short way %+v\nhttp.ReadResponse %+v", got, want)
		}
		gb, gerr := io.ReadAll(got.Body)
		wb, werr := io.ReadAll(want.Body)
		if !bytes.Equal(gb, wb) || (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() {
			t.Fatalf("body %q, %v; http.ReadResponse's %q, %v", gb, gerr, wb, werr)
		}
		grest, _ := io.ReadAll(br)
		wrest, _ := io.ReadAll(wbr)
		if !bytes.Equal(grest, wrest) {
			t.Fatalf("after the response: %q; after http.ReadResponse's: %q", grest, wrest)
		}
	})
}

// The usual response of an app is read the short way, its values shared
// with the last response's; a head the short way does not take is read
// by http.ReadResponse, and the same.
func TestReadResponseShortWay(t *testing.T) {
	var kept keptStrings
	req := &http.Request{Method: http.MethodGet}
	read := func(s string) (*http.Response, *appResponse, string) {
		t.Helper()
		resp, ar, err := readResponse(bufio.NewReader(strings.NewReader(s)), req, &kept)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, ar, string(b)
	}
	const ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
	first, ar, body := read(ok)
	if ar == nil || first.StatusCode != 200 || first.Status != "200 OK" || body != "hello" || first.Header.Get("Content-Type") != "text/plain" {
		t.Fatalf("short way %v: %d %q %v body %q", ar != nil, first.StatusCode, first.Status, first.Header, body)
	}
	second, ar, _ := read(ok)
	if ar == nil || unsafe.StringData(first.Header["Content-Type"][0]) != unsafe.StringData(second.Header["Content-Type"][0]) ||
		unsafe.StringData(first.Status) != unsafe.StringData(second.Status) {
		t.Fatal("the second response's repeated values were not shared with the first's")
	}
	chunked, ar, body := read("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
	if ar != nil || body != "abc" || chunked.ContentLength != -1 {
		t.Fatalf("chunked: short way %v, body %q, length %d", ar != nil, body, chunked.ContentLength)
	}
}

// bufferedConnection finds the Connection fields net/textproto reads in
// a response head that is all in the buffer, and the same tokens.
func FuzzBufferedConnection(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nConnection: X-Secret, close\r\nX-Secret: s\r\n\r\n",
		"HTTP/1.1 200 OK\r\nconnection: close,\r\n x-a\r\n\tx-b\r\nConnection: x-c\r\n\r\nbody",
		"HTTP/1.1 200 OK\nConnection: close\n\n",
		"HTTP/1.1 200 OK\r\nConnection : x\r\nX-Connection: y\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: x\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), 4<<10)
		br.Peek(len(data))
		got := bufferedConnection(br)
		tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(data)))
		if line, err := tr.ReadLine(); err != nil || line == "" {
			return // no status line: http.ReadResponse fails
		}
		h, err := tr.ReadMIMEHeader()
		if err != nil {
			return
		}
		if got == nil && len(data) > br.Size() {
			return // not all buffered: not looked at
		}
		tokens := func(vv []string) []string {
			var out []string
			for _, v := range vv {
				for _, tok := range strings.Split(v, ",") {
					if tok = strings.ToLower(textproto.TrimString(tok)); tok != "" {
						out = append(out, tok)
					}
				}
			}
			return out
		}
		if g, w := tokens(got), tokens(h["Connection"]); !slices.Equal(g, w) {
			t.Fatalf("tokens %q, net/textproto's %q", g, w)
		}
	})
}
