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
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// handshake dials addr with TLS for serverName, verifying against roots,
// and returns the server's leaf certificate.
func handshake(addr, serverName string, roots *x509.CertPool) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: 3 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: serverName, RootCAs: roots, InsecureSkipVerify: roots == nil})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// httpsGet fetches url through a client that trusts roots and dials addr
// whatever the URL's host.
func httpsGet(addr string, roots *x509.CertPool, url string) (string, error) {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), err
}

func meshRoots(t *testing.T, s *server) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(s.caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("no roots in", s.caFile)
	}
	return pool
}

// A sidecar's edge certificate from the mesh CA: only names the Service
// allows are signed, a refusal is retried until an admin allows them, and
// the certificate verifies against the mesh roots with no SPIFFE ID in it.
func TestEdgeMeshCertificate(t *testing.T) {
	s := startServer(t)
	a := startApp(t, "shop")
	dir := t.TempDir()
	svc := filepath.Join(dir, "svc.yaml")
	writeFile(svc, "kind: Service\nname: shop\nspec: {dnsNames: [shop.example.test]}\n")
	s.mustCLI(t, "apply", "-f", svc)

	edge := trellistest.FreePort(t)
	edgeAddr := "127.0.0.1:" + strconv.Itoa(edge)
	p := s.startProxy(t, proxyOpts{service: "shop", appPort: a.port, extra: []string{
		"--edge-port", strconv.Itoa(edge), "--edge-addr", "127.0.0.1",
		"--edge-cert-source", "mesh", "--edge-dns-name", "shop.example.test,api.example.test"}})
	roots := meshRoots(t, s)

	// api.example.test is not allowed: the CA refuses, the proxy says why.
	trellistest.Eventually(t, 10*time.Second, "refusal logged", func() error {
		if !strings.Contains(p.logText(), `DNS name \"api.example.test\" is not allowed for service shop`) {
			return fmt.Errorf("no refusal in the proxy log")
		}
		return nil
	})
	if _, err := handshake(edgeAddr, "shop.example.test", roots); err == nil {
		t.Fatal("handshake succeeded with no certificate issued")
	}

	// The admin allows the domain; the proxy's retry gets the certificate.
	writeFile(svc, "kind: Service\nname: shop\nspec: {dnsNames: [shop.example.test, \"*.example.test\"]}\n")
	s.mustCLI(t, "apply", "-f", svc)
	var leaf *x509.Certificate
	trellistest.Eventually(t, 20*time.Second, "edge certificate issued", func() error {
		var err error
		leaf, err = handshake(edgeAddr, "api.example.test", roots)
		return err
	})
	if len(leaf.URIs) != 0 || len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("edge certificate URIs %v, ext key usage %v: want no SPIFFE ID, server auth only", leaf.URIs, leaf.ExtKeyUsage)
	}
	if got, err := httpsGet(edgeAddr, roots, "https://shop.example.test/"); err != nil || !strings.Contains(got, "shop") {
		t.Fatalf("GET through the edge: %q, %v", got, err)
	}

	// A token for shop cannot have a name no Service allows signed.
	tok, _ := os.ReadFile(s.tokenFile(t, "shop"))
	api := clientFor(t, s, strings.TrimSpace(string(tok)))
	if _, err := api.SignEdge(t.Context(), "shop", csrPEM(t), []string{"bank.example.com"}); err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Errorf("sign bank.example.com for shop: %v, want refused", err)
	}
}

// A gateway's https listeners: one with a mesh-issued certificate, one with
// files that are replaced while it runs; both route to the app, and the
// gateway counts what it proxied.
func TestGatewayHTTPS(t *testing.T) {
	s := startServer(t)
	a := startApp(t, "shop")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "gw.pem"), filepath.Join(dir, "gw.key")
	writeSelfSigned(t, certFile, keyFile, "files.example.test")
	meshPort, filesPort, admin := trellistest.FreePort(t), trellistest.FreePort(t), trellistest.FreePort(t)
	res := filepath.Join(dir, "gw.yaml")
	writeFile(res, fmt.Sprintf(`kind: Service
name: shop
spec: {protocol: http}
---
kind: Gateway
name: front
spec:
  listeners:
    - port: %d
      protocol: https
      tls: {source: mesh, dnsNames: [shop.example.test]}
      routes: [{pathPrefix: /, service: shop}]
    - port: %d
      protocol: https
      tls: {certFile: %s, keyFile: %s}
      routes: [{pathPrefix: /, service: shop}]
`, meshPort, filesPort, certFile, keyFile))
	s.mustCLI(t, "apply", "-f", res)
	s.mustCLI(t, "intention", "allow", "front", "shop")
	s.startProxy(t, proxyOpts{service: "shop", appPort: a.port})
	start(t, "gateway", nil, "gateway", "--name", "front", "--listen-addr", "127.0.0.1",
		"--server", s.addr, "--ca-file", s.caFile, "--token-file", s.tokenFile(t, "front"),
		"--admin-port", strconv.Itoa(admin), "--log-level", "debug")

	meshAddr := "127.0.0.1:" + strconv.Itoa(meshPort)
	filesAddr := "127.0.0.1:" + strconv.Itoa(filesPort)
	roots := meshRoots(t, s)
	trellistest.Eventually(t, 20*time.Second, "https through the mesh-issued listener", func() error {
		got, err := httpsGet(meshAddr, roots, "https://shop.example.test/")
		if err == nil && !strings.Contains(got, "shop") {
			err = fmt.Errorf("answer %q", got)
		}
		return err
	})

	first, err := handshake(filesAddr, "files.example.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := httpsGet(filesAddr, nil, "https://files.example.test/"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("an untrusted self-signed certificate was accepted: %q, %v", got, err)
	}
	// Replaced on disk: the listener serves the new pair, no restart.
	// (The files are compared by content, not modification time: no
	// need to wait for a distinct one.)
	writeSelfSigned(t, certFile, keyFile, "files.example.test")
	trellistest.Eventually(t, 10*time.Second, "new certificate served", func() error {
		c, err := handshake(filesAddr, "files.example.test", nil)
		if err == nil && c.SerialNumber.Cmp(first.SerialNumber) == 0 {
			err = fmt.Errorf("still serial %v", c.SerialNumber)
		}
		return err
	})

	// The gateway's own metrics count what it sent to shop.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", admin))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `trellis_requests_total{code="200",destination="shop",direction="outbound",route="default",source="front",version=""}`) {
		t.Errorf("gateway metrics lack its requests to shop:\n%s", grepLines(string(b), "trellis_requests_total"))
	}
}

func writeSelfSigned(t *testing.T, certFile, keyFile, name string) {
	t.Helper()
	c, err := certs.SelfSigned([]string{name}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, trellistest.KeyPEM(t, c), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func clientFor(t *testing.T, s *server, token string) *client.Client {
	t.Helper()
	ca, _ := os.ReadFile(s.caFile)
	c, err := client.New(client.Config{Addr: s.addr, Token: token, CAPEM: ca})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func csrPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}
