package l7

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// rawApp answers every request with head, then closes the connection.
func rawApp(t *testing.T, head string) string {
	return serveOn(t, func(c net.Conn) {
		defer c.Close()
		if req, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			io.Copy(io.Discard, req.Body)
			io.WriteString(c, head)
		}
	})
}

// net/http reads a response field whose name has a space in it, or before
// its colon ("X A : v"), as a field of that name. Such a name is no token:
// it never reaches a client, neither written by the HTTP/1.1 writer (the
// edge's) nor sent on a stream (whose peer would refuse the whole head).
func TestInvalidResponseFieldNamesDropped(t *testing.T) {
	const head = "HTTP/1.1 200 OK\r\nX A: 1\r\nX-B : 2\r\nX-Good: 3\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
	app := rawApp(t, head)
	check := func(where string, raw []byte) {
		t.Helper()
		got := string(raw)
		if !strings.HasPrefix(got, "HTTP/1.1 200 OK\r\n") || !strings.Contains(strings.ToLower(got), "x-good: 3\r\n") || !strings.HasSuffix(got, "\r\n\r\nok") {
			t.Errorf("%s: reply\n%s", where, got)
		}
		for _, bad := range []string{"x a", "x-b "} {
			if strings.Contains(strings.ToLower(got), bad) {
				t.Errorf("%s: reply has %q:\n%s", where, bad, got)
			}
		}
	}

	// At the edge: the inbound's HTTP/1.1 writer.
	self, _ := identity.New("trellis.local", "web")
	in := &Inbound{Self: func() identity.ID { return self }, Target: app, Protocol: func() string { return v1.ProtocolHTTP }}
	cfg := edgeServerTLS(t)
	addr := serveOn(t, func(c net.Conn) { in.ServeEdge(tls.Server(c, cfg)) })
	c := edgeDialer(t, addr, true)()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: web.example\r\nConnection: close\r\n\r\n")
	raw, _ := io.ReadAll(c)
	c.Close()
	check("edge", raw)

	// Through both sidecars, to an HTTP/1.1 client.
	ca := trellistest.NewCA(t, "trellis.local")
	inAddr := startInboundFor(t, ca, app, v1.ProtocolHTTP, allowAll)
	url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: inAddr, Instance: "web-1"}))
	check("mesh", []byte(trellistest.Exchange(t, strings.TrimPrefix(url, "http://"), "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")))
}

// A field an HTTP/1.1 app's Connection field names is the hop's: it
// stays behind, also when the Connection field says "close" too (which
// net/http takes out of the header it reads), and also when folded.
func TestConnectionNamedResponseFieldsDropped(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	for _, conn := range []string{"X-Secret, close", "close, x-secret", "X-Secret", "close,\r\n x-secret"} {
		app := rawApp(t, "HTTP/1.1 200 OK\r\nConnection: "+conn+"\r\nX-Secret: s\r\nX-Good: 1\r\nContent-Length: 2\r\n\r\nok")
		in := startInboundFor(t, ca, app, v1.ProtocolHTTP, allowAll)
		url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in, Instance: "web-1"}))
		resp, err := http.Get(url + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "ok" || resp.Header.Get("X-Good") != "1" || resp.Header.Get("X-Secret") != "" {
			t.Errorf("Connection: %q: body %q, header %v", conn, b, resp.Header)
		}
	}
}
