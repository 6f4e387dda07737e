package edge_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/edge"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// plainApp is an HTTP app that answers, for each request, whether it came
// over TLS and from which address. With proxied set it expects a PROXY
// protocol header first.
func plainApp(t *testing.T, proxied bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener = l
	if proxied {
		ln = &proxyproto.Listener{Listener: l, Policy: func(net.Addr) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil }}
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls=%v from=%s", r.TLS != nil, r.RemoteAddr)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

func serveEdge(t *testing.T, e *edge.Listener) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.Serve(l)
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

func selfSigned(t *testing.T, names ...string) *tls.Certificate {
	t.Helper()
	c, err := certs.SelfSigned(names, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func staticCert(c *tls.Certificate) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c, nil }
}

func pool(c *tls.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Leaf)
	return p
}

// get fetches / over TLS with cfg through a connection dialed to addr.
func get(addr string, cfg *tls.Config) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: cfg,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		},
	}}
	resp, err := c.Get("https://" + cfg.ServerName + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestTerminatesWithSelfSignedCertificate(t *testing.T) {
	cert := selfSigned(t, "task-1.svc.local")
	addr := serveEdge(t, &edge.Listener{
		TLS:    certs.EdgeServerConfig(staticCert(cert), nil),
		Target: plainApp(t, false),
	})
	// Verified against the certificate itself, under its DNS name: the
	// certificate carries the name, and the app sees plain HTTP.
	got, err := get(addr, &tls.Config{ServerName: "task-1.svc.local", RootCAs: pool(cert)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, "tls=false from=127.0.0.1:") {
		t.Errorf("app saw %q, want plain HTTP", got)
	}
	if _, err := get(addr, &tls.Config{ServerName: "other.local", RootCAs: pool(cert)}); err == nil {
		t.Error("certificate verified for a name it does not carry")
	}
}

func TestRefusesOldTLS(t *testing.T) {
	cert := selfSigned(t, "edge.local")
	addr := serveEdge(t, &edge.Listener{TLS: certs.EdgeServerConfig(staticCert(cert), nil), Target: plainApp(t, false)})
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "edge.local", RootCAs: pool(cert), MinVersion: v, MaxVersion: v})
		if err == nil {
			c.Close()
			t.Errorf("TLS version %x accepted", v)
		}
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		if _, err := get(addr, &tls.Config{ServerName: "edge.local", RootCAs: pool(cert), MinVersion: v, MaxVersion: v}); err != nil {
			t.Errorf("TLS version %x refused: %v", v, err)
		}
	}
}

func TestClientCertificateRequired(t *testing.T) {
	cert := selfSigned(t, "edge.local")
	client := clientCert(t)
	addr := serveEdge(t, &edge.Listener{TLS: certs.EdgeServerConfig(staticCert(cert), pool(client)), Target: plainApp(t, false)})
	if _, err := get(addr, &tls.Config{ServerName: "edge.local", RootCAs: pool(cert)}); err == nil {
		t.Error("a client without a certificate got through")
	}
	stranger := clientCert(t)
	if _, err := get(addr, &tls.Config{ServerName: "edge.local", RootCAs: pool(cert), Certificates: []tls.Certificate{*stranger}}); err == nil {
		t.Error("a client with an untrusted certificate got through")
	}
	if _, err := get(addr, &tls.Config{ServerName: "edge.local", RootCAs: pool(cert), Certificates: []tls.Certificate{*client}}); err != nil {
		t.Errorf("trusted client refused: %v", err)
	}
}

// clientCert makes a self-signed client certificate, its own root.
func clientCert(t *testing.T) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "client"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func writePair(t *testing.T, dir string, c *tls.Certificate) {
	t.Helper()
	key, err := certs.EncodeKey(c.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	// Write to temporary names and rename, as a certificate manager would.
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
	for name, b := range map[string][]byte{"cert.pem": certPEM, "key.pem": key} {
		if err := os.WriteFile(filepath.Join(dir, name+".tmp"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, name+".tmp"), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCertificateFilesReloaded(t *testing.T) {
	dir := t.TempDir()
	first, second := selfSigned(t, "edge.local"), selfSigned(t, "edge.local")
	writePair(t, dir, first)
	var logs logBuffer
	fc := &certs.FileCert{CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem"), Interval: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	if err := fc.Load(); err != nil {
		t.Fatal(err)
	}
	addr := serveEdge(t, &edge.Listener{TLS: certs.EdgeServerConfig(fc.GetCertificate, nil), Target: plainApp(t, false)})
	served := func() *x509.Certificate {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0]
	}
	if !served().Equal(first.Leaf) {
		t.Fatal("not serving the first certificate")
	}
	// A broken replacement is ignored: the last good pair stays.
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), []byte("-----BEGIN CERTIFICATE-----\ngarbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Each handshake after the interval looks at the files again: wait
	// until one has seen the broken file, and check what it served.
	trellistest.Eventually(t, 5*time.Second, "the broken file seen", func() error {
		if !served().Equal(first.Leaf) {
			t.Fatal("a broken file replaced the certificate")
		}
		if !strings.Contains(logs.String(), "keep the last good edge certificate") {
			return fmt.Errorf("not yet reloaded; log: %q", logs.String())
		}
		return nil
	})
	if !served().Equal(first.Leaf) {
		t.Fatal("a broken file replaced the certificate")
	}
	writePair(t, dir, second)
	trellistest.Eventually(t, 5*time.Second, "second certificate served", func() error {
		if !served().Equal(second.Leaf) {
			return fmt.Errorf("still the old one")
		}
		return nil
	})
}

func TestProxyProtocolCarriesClientAddress(t *testing.T) {
	cert := selfSigned(t, "edge.local")
	// The edge listener reads the address a gateway sent and hands it on.
	addr := serveEdge(t, &edge.Listener{
		TLS:         certs.EdgeServerConfig(staticCert(cert), nil),
		Target:      plainApp(t, true),
		AcceptProxy: true,
		SendProxy:   true,
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 40123}, &net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 443})
	if _, err := h.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "edge.local", RootCAs: pool(cert)})
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: edge.local\r\nConnection: close\r\n\r\n")
	b, _ := io.ReadAll(tc)
	if !strings.Contains(string(b), "from=203.0.113.7:40123") {
		t.Errorf("app did not see the client's address: %q", b)
	}

	// Without the header the connection is refused.
	c2, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "edge.local", RootCAs: pool(cert)})
	if err == nil {
		c2.Close()
		t.Error("connection without a PROXY header accepted")
	}
}

func TestPassthroughForwardsBytes(t *testing.T) {
	// With no TLS configured, the bytes (here the app's own TLS) pass.
	cert := selfSigned(t, "app.local")
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*cert}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app tls") })}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	addr := serveEdge(t, &edge.Listener{Target: l.Addr().String()})
	got, err := get(addr, &tls.Config{ServerName: "app.local", RootCAs: pool(cert)})
	if err != nil || got != "app tls" {
		t.Fatalf("got %q, %v", got, err)
	}
}

type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A failed handshake is logged at info level with the client's address,
// the SNI and the reason, once.
func TestFailedHandshakeIsLogged(t *testing.T) {
	cert := selfSigned(t, "edge.local")
	var logs logBuffer
	addr := serveEdge(t, &edge.Listener{TLS: certs.EdgeServerConfig(staticCert(cert), pool(clientCert(t))), Target: plainApp(t, false),
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "edge.local", RootCAs: pool(cert)})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err == nil {
		_, err = tc.Read(make([]byte, 1))
	}
	tc.Close()
	trellistest.Eventually(t, 5*time.Second, "the failed handshake logged", func() error {
		s := logs.String()
		if !strings.Contains(s, "TLS handshake failed") {
			return fmt.Errorf("log: %q", s)
		}
		return nil
	})
	s := logs.String()
	for _, want := range []string{"level=INFO", "remote=" + c.LocalAddr().String(), "sni=edge.local", "certificate"} {
		if !strings.Contains(s, want) {
			t.Errorf("log %q lacks %q", s, want)
		}
	}
	if n := strings.Count(s, "\n"); n != 1 {
		t.Errorf("%d log lines for one failed handshake, want 1:\n%s", n, s)
	}
}

// Drain that gives up ends the connections' dials to the app as well, and
// waits for their goroutines: nothing of the listener runs after it
// returns, even with the app unreachable (its address drops packets).
func TestDrainEndsDialsAndWaits(t *testing.T) {
	m := l4.NewMetrics(prometheus.NewRegistry())
	e := &edge.Listener{Target: trellistest.BlackHole(t), Metrics: m}
	addr := serveEdge(t, e)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	active := m.Active.WithLabelValues("edge")
	trellistest.Eventually(t, 5*time.Second, "the connection served", func() error {
		if v := testutil.ToFloat64(active); v != 1 {
			return fmt.Errorf("%v active connections", v)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := e.Drain(ctx); err == nil {
		t.Error("Drain says all ended, with a connection dialing")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Drain returned after %s, want about its 100ms", took)
	}
	if v := testutil.ToFloat64(active); v != 0 {
		t.Errorf("%v connections still served after Drain returned, want 0", v)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("client read %v, want EOF: the connection closed", err)
	}
}
