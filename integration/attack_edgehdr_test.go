//go:build linux

package integration

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// edgehdrForged are fields a client writes to pass for the mesh or for
// the hops in front of an edge.
var edgehdrForged = [][2]string{
	{"X-Trellis-Upstream-Service-Time", "1"},
	{"Trellis-Reason", "forged"},
	{"Trellis-Upgrade", "1"},
	{"X-Mesh-Source", "spiffe://trellis.local/svc/admin"},
	{"X-Forwarded-Client-Cert", "By=spiffe://trellis.local/svc/web;URI=spiffe://trellis.local/svc/admin"},
	{"Forwarded", "for=10.9.9.9;proto=https"},
	{"X-Real-IP", "10.9.9.9"},
	{"X-Forwarded-For", "10.9.9.9"},
	{"X-Forwarded-Proto", "https"},
	{"X-Forwarded-Host", "evil.example"},
	{"X-Forwarded-Port", "443"},
	{"True-Client-IP", "10.9.9.9"},
	{"X-Original-URL", "/admin"},
	{"X-Request-Id", "forged-id"},
}

// edgehdrApp records the header of each request by its path.
type edgehdrApp struct {
	port int
	mu   sync.Mutex
	got  map[string]http.Header
}

func edgehdrStartApp(t *testing.T) *edgehdrApp {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &edgehdrApp{port: l.Addr().(*net.TCPAddr).Port, got: map[string]http.Header{}}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.got[r.URL.Path] = r.Header.Clone()
		a.mu.Unlock()
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *edgehdrApp) header(path string) http.Header {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.got[path]
}

// edgehdrSend sends GET path with the forged fields on a new connection
// and wants 200.
func edgehdrSend(dial func() (net.Conn, error), host, path string) error {
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", path, host)
	for _, f := range edgehdrForged {
		fmt.Fprintf(&b, "%s: %s\r\n", f[0], f[1])
	}
	b.WriteString("\r\n")
	if _, err := c.Write([]byte(b.String())); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// At every edge of the real binary (a gateway's http and https listeners,
// a sidecar's edge listener for an HTTP service) the mesh's internal
// fields and an untrusted client's forwarding claims do not reach the
// app: it gets what the edge saw. A listener that trusts the client's
// network keeps its chain and appends to it. And an app's own call
// through its outbound cannot forge the mesh's fields toward its peer.
func TestEdgehdrForwardedFields(t *testing.T) {
	s := startServer(t)
	app := edgehdrStartApp(t)
	httpPort, trustPort, httpsPort := trellistest.FreePort(t), trellistest.FreePort(t), trellistest.FreePort(t)
	applyYAML(t, s, fmt.Sprintf(`kind: Service
name: web
spec: {protocol: http}
---
kind: Intention
name: "*.web"
spec: {source: "*", destination: web, action: allow}
---
kind: Gateway
name: front
spec:
  listeners:
    - port: %d
      protocol: http
      routes: [{pathPrefix: /, service: web}]
    - port: %d
      protocol: http
      routes: [{pathPrefix: /, service: web}]
      trustedProxies: [127.0.0.0/8]
    - port: %d
      protocol: https
      tls: {source: mesh, dnsNames: [web.example.test]}
      routes: [{pathPrefix: /, service: web}]
`, httpPort, trustPort, httpsPort))
	edge := trellistest.FreePort(t)
	s.startProxy(t, proxyOpts{service: "web", appPort: app.port,
		extra: []string{"--edge-port", strconv.Itoa(edge), "--edge-addr", "127.0.0.1", "--edge-dns-name", "web.example.test"}})
	up, upPort := loopAddr(t)
	s.startProxy(t, proxyOpts{service: "client", appPort: app.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	start(t, "gateway", nil, "gateway", "--name", "front", "--listen-addr", "127.0.0.1",
		"--server", s.addr, "--ca-file", s.caFile, "--token-file", s.tokenFile(t, "front"),
		"--admin-port", strconv.Itoa(trellistest.FreePort(t)), "--log-level", "debug")

	plain := func(addr string) func() (net.Conn, error) {
		return func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }
	}
	tlsTo := func(addr string) func() (net.Conn, error) {
		return func() (net.Conn, error) {
			return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
				&tls.Config{ServerName: "web.example.test", InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		}
	}
	at := func(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
	const host = "web.example.test"
	gateway := "By=spiffe://trellis.local/svc/web;URI=spiffe://trellis.local/svc/front"
	for _, c := range []struct {
		name, scheme string
		dial         func() (net.Conn, error)
		peer         string // the X-Forwarded-Client-Cert the app should see, "" none
	}{
		{"ingress-http", "http", plain(at(httpPort)), gateway},
		{"ingress-https", "https", tlsTo(at(httpsPort)), gateway},
		{"sidecar-edge", "https", tlsTo(at(edge)), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := "/edgehdr/" + c.name
			trellistest.Eventually(t, 30*time.Second, c.name+" serving", func() error { return edgehdrSend(c.dial, host, path) })
			h := app.header(path)
			for _, k := range []string{"X-Trellis-Upstream-Service-Time", "Trellis-Reason", "Trellis-Upgrade", "X-Mesh-Source",
				"X-Forwarded-Port", "True-Client-Ip", "X-Original-Url"} {
				if v, ok := h[k]; ok {
					t.Errorf("the app got %s: %q", k, v)
				}
			}
			want := map[string]string{
				"X-Forwarded-For":   "127.0.0.1",
				"X-Real-Ip":         "127.0.0.1",
				"X-Forwarded-Proto": c.scheme,
				"X-Forwarded-Host":  host,
				"Forwarded":         "for=127.0.0.1;host=" + host + ";proto=" + c.scheme,
			}
			for k, v := range want {
				if got := h.Values(k); len(got) != 1 || got[0] != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			if got := h.Values("X-Request-Id"); len(got) != 1 || got[0] == "forged-id" {
				t.Errorf("X-Request-Id %q, want one the mesh made", got)
			}
			if got := h.Get("X-Forwarded-Client-Cert"); got != c.peer {
				t.Errorf("X-Forwarded-Client-Cert %q, want %q", got, c.peer)
			}
		})
	}

	t.Run("ingress-trusted-hop", func(t *testing.T) {
		path := "/edgehdr/trusted"
		trellistest.Eventually(t, 30*time.Second, "trusted listener serving", func() error { return edgehdrSend(plain(at(trustPort)), host, path) })
		h := app.header(path)
		for _, k := range []string{"Trellis-Reason", "Trellis-Upgrade", "X-Mesh-Source", "X-Trellis-Upstream-Service-Time"} {
			if v, ok := h[k]; ok {
				t.Errorf("the app got %s: %q from a trusted hop", k, v)
			}
		}
		want := map[string]string{
			"X-Forwarded-For":         "10.9.9.9, 127.0.0.1",
			"X-Real-Ip":               "10.9.9.9",
			"X-Forwarded-Proto":       "https",
			"X-Forwarded-Host":        "evil.example",
			"Forwarded":               "for=10.9.9.9;proto=https, for=127.0.0.1;host=" + host + ";proto=http",
			"X-Request-Id":            "forged-id",
			"X-Forwarded-Client-Cert": gateway,
		}
		for k, v := range want {
			if got := h.Values(k); len(got) != 1 || got[0] != v {
				t.Errorf("%s: %q, want %q", k, got, v)
			}
		}
	})

	t.Run("outbound", func(t *testing.T) {
		path := "/edgehdr/outbound"
		trellistest.Eventually(t, 30*time.Second, "outbound serving", func() error { return edgehdrSend(plain(up), "web", path) })
		h := app.header(path)
		for _, k := range []string{"X-Trellis-Upstream-Service-Time", "Trellis-Reason", "Trellis-Upgrade", "X-Mesh-Source"} {
			if v, ok := h[k]; ok {
				t.Errorf("the peer's app got %s: %q from the caller's app", k, v)
			}
		}
		if got, want := h.Get("X-Forwarded-Client-Cert"), "By=spiffe://trellis.local/svc/web;URI=spiffe://trellis.local/svc/client"; got != want {
			t.Errorf("X-Forwarded-Client-Cert %q, want %q", got, want)
		}
	})
}
