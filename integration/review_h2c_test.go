//go:build linux

package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
)

// The upgrade stream passes "Upgrade: h2c" and HTTP2-Settings to the app
// (the inbound writes the checked head as it came, hop-by-hop fields
// included). A Go app served through h2c.NewHandler, as apps that take
// gRPC or HTTP/2 without TLS are, answers 101 and then reads HTTP/2 on
// the connection: every request on it after the first is unchecked.
// Checking for a 101 does not close this one; an upgrade to h2c must be
// refused (and HTTP2-Settings dropped) as Envoy does.
func TestReviewH2CUpgradeSmuggling(t *testing.T) {
	s := startServer(t)
	var mu sync.Mutex
	var got []string
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			mu.Lock()
			got = append(got, r.Proto+" "+r.Method+" "+r.URL.Path)
			mu.Unlock()
		}
	})
	srv := &http.Server{Handler: h2c.NewHandler(h, &http2.Server{})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	applyYAML(t, s, `kind: Service
name: web
spec: {protocol: http}
---
kind: Intention
name: client.web
spec:
  source: client
  destination: web
  permissions:
    - {action: deny, http: {pathPrefix: /admin/}}
    - {action: allow, http: {pathPrefix: /}}
`)
	s.startProxy(t, proxyOpts{service: "web", appPort: l.Addr().(*net.TCPAddr).Port})
	s.waitInstances(t, 10*time.Second, "web registered", "web", 1)
	ins, _ := s.api.Instances(t.Context(), "web")
	ep := net.JoinHostPort(ins[0].Address, fmt.Sprint(ins[0].Port))

	src := meshPeer(t, s, "client")
	pool := l4.NewPool(0, 0, nil)
	defer pool.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := pool.DialUpgrade(ctx, l4.Endpoint{Addr: ep}, "web", src.ClientConfig(certs.ExpectService("web"), l4.ALPN))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET /ok HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: \r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade answer: %v", err)
	}
	if resp.StatusCode == http.StatusBadRequest {
		return // the h2c upgrade is refused, as it must be
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("h2c upgrade answered %d, want 400", resp.StatusCode)
	}
	// HTTP/2 from here: the preface, our settings, and a request for a
	// path the intention denies, on stream 3 (1 was the upgraded request).
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, br)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "web"}, {":path", "/admin/users"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			break
		}
		if f.Header().StreamID == 3 && f.Header().Flags.Has(http2.FlagHeadersEndStream|http2.FlagDataEndStream) {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, r := range got {
		if strings.Contains(r, "/admin") {
			t.Errorf("after an h2c upgrade through the inbound, web's app served %s (app saw %q)", r, got)
		}
	}
}
