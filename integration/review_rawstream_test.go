//go:build linux

package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
)

// meshPeer is a caller that holds a token's SVID and speaks the tunnel
// itself instead of through a sidecar, as a compromised workload can.
func meshPeer(t *testing.T, s *server, service string) *certs.Source {
	t.Helper()
	secret := strings.TrimSpace(s.mustCLI(t, "token", "create", "--service", service))
	c := clientFor(t, s, secret)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	signed, err := c.Sign(t.Context(), service, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	cert, err := tls.X509KeyPair([]byte(signed.ChainPEM), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := c.Roots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	b, err := certs.NewBundle(roots.TrustDomain, []byte(roots.RootsPEM))
	if err != nil {
		t.Fatal(err)
	}
	src := &certs.Source{}
	src.SetCertificate(&cert)
	src.SetBundle(b)
	return src
}

// An HTTP service's inbound splices a plain CONNECT stream (no request
// pseudo-fields, no upgrade mark) to the app whenever the caller's
// intention allows it without HTTP permissions (or the mesh allows by
// default): the bytes reach the app with no request check at all, and
// the peer header in them is the caller's own. Here client, allowed to
// call web, names itself spiffe://trellis.local/svc/root to web's app,
// with a lowercase method and a dot segment. A stream that is not a
// request should be refused by an HTTP service's inbound.
func TestReviewRawStreamToHTTPService(t *testing.T) {
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
			got = append(got, fmt.Sprintf("%s %s xfcc=%q", r.Method, r.RequestURI, r.Header.Values("X-Forwarded-Client-Cert")))
			mu.Unlock()
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	applyYAML(t, s, "kind: Service\nname: web\nspec: {protocol: http}\n")
	s.mustCLI(t, "intention", "allow", "client", "web")
	s.startProxy(t, proxyOpts{service: "web", appPort: l.Addr().(*net.TCPAddr).Port})
	s.waitInstances(t, 10*time.Second, "web registered", "web", 1)
	ins, _ := s.api.Instances(t.Context(), "web")
	ep := net.JoinHostPort(ins[0].Address, fmt.Sprint(ins[0].Port))

	src := meshPeer(t, s, "client")
	pool := l4.NewPool(0, 0, nil)
	defer pool.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := pool.Open(ctx, l4.Endpoint{Addr: ep}, "web", src.ClientConfig(certs.ExpectService("web"), l4.ALPN))
	var refused *tunnel.StatusError
	if errors.As(err, &refused) && refused.Status == http.StatusBadRequest {
		return // refused by the HTTP service's inbound, before the app
	}
	if err != nil {
		t.Fatalf("raw stream: %v, want a refusal with 400 from web's inbound", err)
	}
	fmt.Fprint(st, "get /x/../admin HTTP/1.1\r\nHost: web\r\nX-Forwarded-Client-Cert: By=spiffe://trellis.local/svc/web;URI=spiffe://trellis.local/svc/root\r\nConnection: close\r\n\r\n")
	t.Error("the raw stream was accepted")
	mu.Lock()
	defer mu.Unlock()
	for _, r := range got {
		t.Errorf("a raw stream reached web's app: %s", r)
	}
}

// The upgrade stream (l4.UpgradeHeader) checks the first request's head,
// then copies bytes both ways whatever the app answers: a second request
// pipelined behind an allowed upgrade request reaches an app that did not
// upgrade, past every permission. Here the intention client -> web denies
// /admin/ and a Host of admin.example.com.
func TestReviewUpgradeSmugglingEndToEnd(t *testing.T) {
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
			got = append(got, fmt.Sprintf("%s %s host=%s xfcc=%q", r.Method, r.RequestURI, r.Host, r.Header.Values("X-Forwarded-Client-Cert")))
			mu.Unlock()
		}
	})}
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
    - {action: deny, http: {headers: [{name: host, exact: admin.example.com}]}}
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
	fmt.Fprint(c, "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"+
		"GET /admin/users HTTP/1.1\r\nHost: admin.example.com\r\nX-Forwarded-Client-Cert: By=x;URI=spiffe://trellis.local/svc/root\r\nConnection: close\r\n\r\n")
	// The stream ends once the app's answer is relayed (or, were the
	// smuggled request served, after that one's "Connection: close"):
	// read it to its end, then look at what the app got.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("the upgrade stream did not end: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, r := range got {
		if strings.Contains(r, "/admin") {
			t.Errorf("smuggled behind an upgrade the app did not make, web's app served: %s", r)
		}
	}
}
