package l7

import (
	"io"
	"net"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

var statusLine = regexp.MustCompile(`(?m)^HTTP/1\.1 (\d{3}) `)

// sendRaw writes raw to the HTTP/1.1 listener at addr, ends its side of
// the connection, and returns the statuses of the responses that came
// before the outbound closed it.
func sendRaw(t testing.TB, addr, raw string) []string {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Only so that a lost answer fails the test rather than hangs it.
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	out, err := io.ReadAll(c)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("reading the answers: %v", err)
	}
	var got []string
	for _, m := range statusLine.FindAllStringSubmatch(string(out), -1) {
		got = append(got, m[1])
	}
	return got
}

// FuzzOutboundHeadPath: an HTTP/1.1 client's requests served on the
// outbound's fields path (Outbound.ServeHead, and the h1 server's head
// reader before it) get the same answers, and the app behind the inbound
// the same requests, as on the http.Request path, for any bytes a client
// can send on a connection; routes match and rewrite the same.
func FuzzOutboundHeadPath(f *testing.F) {
	for _, s := range []string{
		"GET /old/a?x=1 HTTP/1.1\nHost: web\nX-V: 2\nCookie: a=1\nCookie: b=2\nUser-Agent: u\n\n",
		"POST /admin;x/ HTTP/1.1\nHost: web:8080\nContent-Type: text/plain\nContent-Length: 4\nX_Request_Id: admin\nX-Request-Id: keep\n\nabcd",
		"GET /%41%2e/c|d!e?a=%zz&b HTTP/1.1\nHost: web\nTE: trailers, deflate\nConnection: te, x-drop, close\nX-Drop: 1\nX-Forwarded-Client-Cert: forged\n\n",
		"GET /x HTTP/1.1\nHost: web\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\nTracestate: a=b\nX-Request-Id: \n\n",
		"PUT /old/%c0%ae/x? HTTP/1.1\nHost: web\nTrailer: X-T\nKeep-Alive: 1\nContent-Length: 4\n\nbodyGET /second HTTP/1.1\nHost: web\n\n",
		"POST /c HTTP/1.1\nHost: web\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n",
		"GET / HTTP/1.0\nConnection: keep-alive\n\nGET /2 HTTP/1.0\nHost: web\n\n",
		"GET /e HTTP/1.1\nHost: web\nExpect: 100-continue\nHTTP2-Settings: x\n\n",
		"HEAD /h HTTP/1.1\nHost: web\nConnection: Upgrade\n\n",
		"OPTIONS * HTTP/1.1\nHost: web\n\n",
		"GET http://web/abs HTTP/1.1\nHost: other\n\n",
	} {
		f.Add(s)
	}
	ca := trellistest.NewCA(f, "trellis.local")
	addrs, apps := startOutboundPair(f, ca, diffRoutes(f))
	f.Fuzz(func(t *testing.T, head string) {
		raw := strings.ReplaceAll(head, "\n", "\r\n")
		var got [2][]string
		var saw [2][]*seen
		for i := range addrs {
			got[i] = sendRaw(t, addrs[i], raw)
			saw[i] = apps[i].takeAll()
			for _, s := range saw[i] {
				normalizeSeen(s, "keep", "0af7651916cd43dd8448eb211c80319c")
			}
		}
		if !reflect.DeepEqual(got[0], got[1]) {
			t.Fatalf("statuses %v on the fields path, %v on the http.Request path", got[0], got[1])
		}
		if !reflect.DeepEqual(saw[0], saw[1]) {
			t.Fatalf("the app saw\n%+v\non the fields path, and\n%+v\non the http.Request path", derefAll(saw[0]), derefAll(saw[1]))
		}
	})
}

func derefAll(ss []*seen) []seen {
	out := make([]seen, len(ss))
	for i, s := range ss {
		out[i] = *s
	}
	return out
}
