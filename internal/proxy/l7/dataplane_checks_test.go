package l7

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/httpmatch"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// echoUpgradeApp answers an upgrade to "echo" with 101 and then echoes
// every line it reads back in capitals; any other request gets 200. It
// records the request lines it served.
type echoUpgradeApp struct {
	addr  string
	mu    sync.Mutex
	heads []string
}

func startEchoUpgradeApp(t *testing.T) *echoUpgradeApp {
	a := &echoUpgradeApp{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.heads = append(a.heads, fmt.Sprintf("%s %s xfcc=%q", r.Method, r.URL.RequestURI(), r.Header.Values(PeerHeader)))
		a.mu.Unlock()
		if !strings.EqualFold(r.Header.Get("Upgrade"), "echo") {
			io.WriteString(w, "plain\n")
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString(strings.ToUpper(line))
			brw.Flush()
		}
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	a.addr = l.Addr().String()
	return a
}

func (a *echoUpgradeApp) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.heads...)
}

// serveOn accepts connections on a loopback listener and hands each to
// serve; it returns the address.
func serveOn(t testing.TB, serve func(net.Conn)) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return l.Addr().String()
}

// An upgrade the app accepts still works through the upgrade stream: the
// bytes sent after the head reach the app once it answered 101, and its
// answer comes back.
func TestUpgradeStreamAfter101(t *testing.T) {
	a := startEchoUpgradeApp(t)
	self, _ := identity.New("trellis.local", "web")
	peer, _ := identity.New("trellis.local", "client")
	in := &Inbound{Self: func() identity.ID { return self }, Target: a.addr, Authorize: allowAll,
		Protocol: func() string { return v1.ProtocolHTTP }}
	addr := serveOn(t, func(c net.Conn) { in.ServeUpgrade(c, peer) })
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// Sent at once: the line after the head must wait for the 101.
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, Keep-Alive\r\nKeep-Alive: 5\r\nUpgrade: echo\r\n\r\nhello\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "echo" {
		t.Fatalf("got %d, Upgrade %q", resp.StatusCode, resp.Header.Get("Upgrade"))
	}
	line, err := br.ReadString('\n')
	if err != nil || line != "HELLO\n" {
		t.Fatalf("after the 101: %q, %v", line, err)
	}
	if got := a.seen(); len(got) != 1 || !strings.Contains(got[0], "spiffe://trellis.local/svc/client") {
		t.Errorf("app saw %q, want one request naming the caller", got)
	}
}

// A plain caller (permissive mode) goes through the L7 checks with no
// identity: dot segments are resolved, lowercase methods refused, the peer
// header in every spelling removed and not set, the authorization asked
// for the unauthenticated caller; its upgrades wait for the app's 101.
func TestServePlainChecksEveryRequest(t *testing.T) {
	a := startEchoUpgradeApp(t)
	self, _ := identity.New("trellis.local", "web")
	var mu sync.Mutex
	var callers []string
	policy := authz.ForDestination("web", v1.Allow, sidestepPolicy)
	if err := policy.Compile(); err != nil {
		t.Fatal(err)
	}
	in := &Inbound{Self: func() identity.ID { return self }, Target: a.addr,
		Authorize: func(p identity.ID, r *httpmatch.Request) authz.Decision {
			mu.Lock()
			callers = append(callers, p.String())
			mu.Unlock()
			return policy.CheckRequest(p.Service(), r)
		},
		Protocol: func() string { return v1.ProtocolHTTP }}
	addr := serveOn(t, in.ServePlain)
	forged := "By=spiffe://trellis.local/svc/web;URI=spiffe://trellis.local/svc/admin"
	if got := rawRequest(t, addr, "GET /a/../b HTTP/1.1\r\nHost: web\r\nX-Forwarded-Client-Cert: "+forged+"\r\nX_Forwarded_Client_Cert: "+forged+"\r\n\r\n"); got != 200 {
		t.Fatalf("plain GET: %d", got)
	}
	if got := rawRequest(t, addr, "get /b HTTP/1.1\r\nHost: web\r\n\r\n"); got != http.StatusMethodNotAllowed {
		t.Errorf("lowercase method: %d", got)
	}
	if got := rawRequest(t, addr, "GET /x HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"); got != http.StatusBadRequest {
		t.Errorf("h2c upgrade: %d", got)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\nX-Forwarded-Client-Cert: "+forged+"\r\n\r\nping\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("plain upgrade: %v %v", resp, err)
	}
	if line, _ := br.ReadString('\n'); line != "PING\n" {
		t.Errorf("after the 101: %q", line)
	}
	for _, h := range a.seen() {
		if strings.Contains(h, "svc/") || strings.Contains(h, "..") || !strings.HasPrefix(h, "GET /") {
			t.Errorf("the app got %s from a plain caller", h)
		}
	}
	if len(a.seen()) != 2 {
		t.Errorf("the app saw %q, want /b and /ws", a.seen())
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range callers {
		if p != "" {
			t.Errorf("a plain request was authorized as %q", p)
		}
	}
}

// The edge listener's HTTP path: no authorization, but the checks, the
// peer header removed, X-Forwarded-For the client's address.
func TestServeEdgeStripsPeerHeader(t *testing.T) {
	a := startApp(t, "web")
	self, _ := identity.New("trellis.local", "web")
	in := &Inbound{Self: func() identity.ID { return self }, Target: a.addr,
		Authorize: func(identity.ID, *httpmatch.Request) authz.Decision {
			t.Error("the edge path asked for an authorization")
			return authz.Decision{}
		},
		Protocol: func() string { return v1.ProtocolHTTP }}
	addr := serveOn(t, in.ServeEdge)
	if got := rawRequest(t, addr, "GET /a/./b HTTP/1.1\r\nHost: web\r\nX-Forwarded-Client-Cert: By=x;URI=spiffe://trellis.local/svc/admin\r\nX-Forwarded-For: 10.9.9.9\r\nX_Forwarded_For: 10.9.9.9\r\n\r\n"); got != 200 {
		t.Fatalf("edge GET: %d", got)
	}
	a.mu.Lock()
	h := a.last
	a.mu.Unlock()
	if v, ok := h[PeerHeader]; ok {
		t.Errorf("the app got %s: %q from the edge", PeerHeader, v)
	}
	if got := h.Values("X-Forwarded-For"); len(got) != 1 || got[0] != "127.0.0.1" {
		t.Errorf("X-Forwarded-For %q, want the client's address alone", got)
	}
	for k := range h {
		if strings.Contains(k, "_") {
			t.Errorf("the app got %s", k)
		}
	}
	if got := rawRequest(t, addr, "GET /%2e%2e/x HTTP/1.1\r\nHost: web\r\n\r\n"); got != 200 {
		t.Errorf("encoded dot segment: %d", got)
	}
	if got := rawRequest(t, addr, "GET /a%2fb HTTP/1.1\r\nHost: web\r\n\r\n"); got != http.StatusBadRequest {
		t.Errorf("encoded slash: %d", got)
	}
}

// The outbound refuses an upgrade to h2c and HTTP2-Settings before
// anything leaves, as the inbound does.
func TestH2CUpgradeRefusedAtOutbound(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	in := startInbound(t, ca, a, allowAll)
	url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in, Instance: "web-1"}))
	addr := strings.TrimPrefix(url, "http://")
	for _, head := range []string{
		"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: \r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket, H2C\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
	} {
		if got := rawRequest(t, addr, head); got != http.StatusBadRequest {
			t.Errorf("%q: got %d, want 400", head, got)
		}
	}
	if n := a.hits.Load(); n != 0 {
		t.Errorf("%d h2c requests reached the app", n)
	}
}
