package l7

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// HTTP/1.1 semantics a client and an app rely on, through both sidecars:
// Expect: 100-continue, chunked bodies with trailers both ways, and a GET
// that reaches the app as a GET (no body, no chunked encoding).
func TestHTTP1ThroughProxies(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	a.serve = func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.Header().Set("Trailer", "X-Result")
		fmt.Fprintf(w, "%s body=%q te=%v cl=%d checksum=%q", r.Method, body, r.TransferEncoding, r.ContentLength, r.Trailer.Get("X-Checksum"))
		w.Header().Set("X-Result", "done")
	}
	in := startInbound(t, ca, a, allowAll)
	url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in}))
	addr := strings.TrimPrefix(url, "http://")

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)

	t.Run("get", func(t *testing.T) {
		io.WriteString(c, "GET /x HTTP/1.1\r\nHost: web\r\n\r\n")
		body, _ := readResponse(t, br, "GET")
		if want := `GET body="" te=[] cl=0 checksum=""`; body != want {
			t.Fatalf("app saw %s, want %s", body, want)
		}
	})
	t.Run("expect-continue", func(t *testing.T) {
		io.WriteString(c, "POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
		// The client waits for 100 Continue before it sends the body.
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
			t.Fatalf("got %q, %v; want HTTP/1.1 100 Continue", line, err)
		}
		if blank, _ := br.ReadString('\n'); blank != "\r\n" {
			t.Fatalf("100 Continue followed by %q", blank)
		}
		io.WriteString(c, "hello")
		body, _ := readResponse(t, br, "POST")
		if want := `POST body="hello" te=[] cl=5 checksum=""`; body != want {
			t.Fatalf("app saw %s, want %s", body, want)
		}
	})
	t.Run("trailers", func(t *testing.T) {
		io.WriteString(c, "POST /sum HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"+
			"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n")
		body, resp := readResponse(t, br, "POST")
		if want := `POST body="hello world" te=[chunked] cl=-1 checksum="abc"`; body != want {
			t.Fatalf("app saw %s, want %s", body, want)
		}
		if got := resp.Trailer.Get("X-Result"); got != "done" {
			t.Fatalf("response trailer X-Result = %q, want done (trailers %v)", got, resp.Trailer)
		}
	})
}

func readResponse(t *testing.T, br *bufio.Reader, method string) (string, *http.Response) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %q %v", resp.StatusCode, b, err)
	}
	return string(b), resp
}
