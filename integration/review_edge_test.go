//go:build linux

package integration

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// A sidecar's edge listener (terminate mode) hands the outside client's
// bytes to the app as they come, so a client anywhere the edge port is
// reachable (it binds 0.0.0.0 by default) writes the peer header itself
// and the app reads a verified mesh caller's identity that nobody
// verified. The inbound and the ingress replace that header; the edge
// listener of an HTTP service should too (or the README should say that
// an app with an edge port cannot trust it).
func TestReviewEdgeListenerForgesPeerHeader(t *testing.T) {
	s := startServer(t)
	var mu sync.Mutex
	var got []string
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			mu.Lock()
			got = append(got, r.Header.Get("X-Forwarded-Client-Cert"))
			mu.Unlock()
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	applyYAML(t, s, "kind: Service\nname: shop\nspec: {protocol: http}\n")
	edge := trellistest.FreePort(t)
	s.startProxy(t, proxyOpts{service: "shop", appPort: l.Addr().(*net.TCPAddr).Port,
		extra: []string{"--edge-port", strconv.Itoa(edge), "--edge-addr", "127.0.0.1", "--edge-dns-name", "shop.example.test"}})
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	forged := "By=spiffe://trellis.local/svc/shop;URI=spiffe://trellis.local/svc/admin"
	trellistest.Eventually(t, 10*time.Second, "edge request answered", func() error {
		req, _ := http.NewRequest("GET", fmt.Sprintf("https://127.0.0.1:%d/", edge), nil)
		req.Header.Set("X-Forwarded-Client-Cert", forged)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for _, h := range got {
		if h == forged {
			t.Errorf("the app got the outside client's X-Forwarded-Client-Cert: %s", h)
		}
	}
}
