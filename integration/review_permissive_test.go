//go:build linux

package integration

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// In permissive mode a plain caller that a wildcard intention admits is
// spliced to an HTTP service's app as raw bytes: no request checks and,
// above all, the peer header it wrote reaches the app as if the proxy had
// verified it. Any process that reaches the inbound port can name itself
// any mesh identity to the app, and send what sanitize refuses (dot
// segments, lowercase methods). An HTTP service's plain callers should
// go through the L7 inbound with no identity, like every mTLS caller.
func TestReviewPermissivePlainForgesPeerHeader(t *testing.T) {
	s := startServer(t)
	var mu sync.Mutex
	var seen []string
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%s %s xfcc=%q", r.Method, r.RequestURI, r.Header.Values("X-Forwarded-Client-Cert")))
		mu.Unlock()
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	applyYAML(t, s, "kind: Service\nname: web\nspec: {protocol: http}\n---\nkind: Mesh\nname: default\nspec: {mtls: permissive}\n")
	s.mustCLI(t, "intention", "allow", "*", "web")
	s.startProxy(t, proxyOpts{service: "web", appPort: l.Addr().(*net.TCPAddr).Port})
	s.waitInstances(t, 10*time.Second, "web registered", "web", 1)
	ins, _ := s.api.Instances(t.Context(), "web")
	ep := net.JoinHostPort(ins[0].Address, fmt.Sprint(ins[0].Port))

	forged := "By=spiffe://trellis.local/svc/web;URI=spiffe://trellis.local/svc/admin"
	trellistest.Eventually(t, 10*time.Second, "a plain request answered", func() error {
		c, err := net.DialTimeout("tcp", ep, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(c, "GET /a/../b HTTP/1.1\r\nHost: web\r\nX-Forwarded-Client-Cert: %s\r\nConnection: close\r\n\r\n", forged)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for _, r := range seen {
		if strings.Contains(r, "svc/admin") || strings.Contains(r, "..") {
			t.Errorf("the app got %s from an unauthenticated plain caller", r)
		}
	}
}
