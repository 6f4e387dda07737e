package l7

import (
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
)

// The inbound's upgrade stream (l4.UpgradeHeader, which any peer with an
// SVID can open with l4.Pool.DialUpgrade) checks the first request's head
// and then copies every byte both ways, whatever the app answers. A peer
// that speaks the stream itself, rather than through its own sidecar's
// outbound, pipelines a second request behind an allowed upgrade request;
// an app that does not upgrade (200, 404, 426) reads it as the next
// request on the connection, with no rule, sanitize or peer header
// applied. Seen against a running mesh: GET /admin/secret with Host
// admin.example.com, X-Role: admin and a forged X-Forwarded-Client-Cert
// reached b's app past three denies of intention a -> b.
func TestReviewUpgradeSmuggling(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	al, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		io.WriteString(w, "no websocket here\n") // 200: the app does not upgrade
	})}
	go srv.Serve(al)
	t.Cleanup(func() { srv.Close() })

	policy := authz.ForDestination("web", v1.Deny, sidestepPolicy)
	if err := policy.Compile(); err != nil {
		t.Fatal(err)
	}
	self, _ := identity.New("trellis.local", "web")
	peer, _ := identity.New("trellis.local", "client")
	in := &Inbound{Self: func() identity.ID { return self }, Target: al.Addr().String(),
		Protocol:  func() string { return v1.ProtocolHTTP },
		Authorize: func(p identity.ID, r *httpmatch.Request) authz.Decision { return policy.CheckRequest(p.Service(), r) }}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			in.ServeUpgrade(c, peer)
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"+
		"GET /admin/users HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
	io.ReadAll(c)
	mu.Lock()
	defer mu.Unlock()
	for _, p := range paths {
		if strings.HasPrefix(p, "/admin") {
			t.Errorf("the app served %s, which intention client -> web denies, smuggled behind an upgrade it refused (app saw %q)", p, paths)
		}
	}
}
