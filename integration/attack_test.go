//go:build linux

package integration

// The security review's attacks, run against the real binary (issue 17).
// This file holds the control plane's: the fake API, tokens, the API's TLS
// and the CLI's handling of names. attack_*_test.go hold the others (the
// store, forged SVIDs, authorization, connections that outlive trust).
//
// "Refused" means what the review asked: refused at the TLS or HTTP level,
// nothing reaches what it was aimed at, a log line says why, and the
// server keeps serving.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// The review's attack: a Service whose dnsNames held "localhost" got an
// edge certificate from the mesh CA, and a fake API serving it received
// the admin token from the CLI.
func TestAttackFakeAPI(t *testing.T) {
	s := startServerKnownCA(t)
	dir := t.TempDir()

	// Such names are refused when applied...
	for _, name := range []string{"localhost", "api.localhost", "127.0.0.1", "*.com", "*.*.example.test"} {
		f := filepath.Join(dir, "svc.yaml")
		writeFile(f, fmt.Sprintf("kind: Service\nname: evil\nspec: {dnsNames: [%q]}\n", name))
		out, code := s.cli(t, "apply", "-f", f)
		if code == 0 || !strings.Contains(out, "spec.dnsNames[0]") {
			t.Errorf("apply of dnsNames [%s]: exit %d, want a refusal naming the field: %s", name, code, out)
		}
	}
	// ...and when asked for with a service token.
	tok := strings.TrimSpace(s.mustCLI(t, "token", "create", "--service", "evil", "--description", "evil's token"))
	_, err := clientFor(t, s, tok).SignEdge(t.Context(), "evil", csrPEM(t), []string{"localhost"})
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("edge certificate for localhost: err = %v, want 403", err)
	}
	trellistest.Eventually(t, 5*time.Second, "the refusal in the server's log", func() error {
		for _, l := range strings.Split(s.logText(), "\n") {
			if strings.Contains(l, "api request refused") && strings.Contains(l, "evil's token") && strings.Contains(l, "/v1/ca/sign") {
				return nil
			}
		}
		return fmt.Errorf("no line in: %s", tail(s.logText(), 5))
	})
	if strings.Contains(s.logText(), tok) {
		t.Error("the server logged a token's secret")
	}

	// Even a certificate for localhost from the mesh CA itself (as if it
	// had been issued before these rules) does not make an API: the CLI
	// requires the server's SPIFFE ID.
	caPEM, _ := os.ReadFile(s.caFile)
	keyPEM, err := os.ReadFile(s.caKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	meshCA, err := ca.Load("trellis.local", caPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	chain, err := meshCA.SignEdge(ca.EdgeRequest{CSR: csr, Service: "evil", DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	kp, _ := certs.EncodeKey(key)
	cert, err := certs.KeyPair(chain, kp)
	if err != nil {
		t.Fatal(err)
	}
	var stolen atomic.Value
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*cert}})
	if err != nil {
		t.Fatal(err)
	}
	fake := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			stolen.Store(r.Header.Get("Authorization"))
			io.WriteString(w, "[]")
		}),
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go fake.Serve(l)
	t.Cleanup(func() { fake.Close() })
	port := l.Addr().(*net.TCPAddr).Port
	out, code := runCLI(t, []string{"TRELLIS_ADDR=localhost:" + strconv.Itoa(port), "TRELLIS_TOKEN=" + s.admin, "TRELLIS_CACERT=" + s.caFile, "HOME=" + dir}, "get", "services")
	if code == 0 || !strings.Contains(out, "not the Trellis control plane") {
		t.Errorf("CLI against the fake API: exit %d: %s", code, out)
	}
	if v := stolen.Load(); v != nil {
		t.Errorf("the fake API received a request (Authorization %q)", v)
	}
	// The real server still serves.
	s.mustCLI(t, "get", "services")
}

// tokenID returns the ID of the token whose services are exactly services.
func tokenID(t *testing.T, s *server, services ...string) string {
	t.Helper()
	var toks []v1.Token
	if err := json.Unmarshal([]byte(s.mustCLI(t, "get", "tokens", "-o", "json")), &toks); err != nil {
		t.Fatal(err)
	}
	for _, tk := range toks {
		if strings.Join(tk.Services, ",") == strings.Join(services, ",") {
			return tk.ID
		}
	}
	t.Fatalf("no token for %v", services)
	return ""
}

// A proxy stream opened before its token was revoked kept its
// registration and its pushes: now the stream ends at once.
func TestAttackRevokedTokenStream(t *testing.T) {
	s := startServer(t)
	a := startApp(t, "web")
	p := s.startProxy(t, proxyOpts{service: "web", appPort: a.port})
	s.waitInstances(t, 10*time.Second, "web registered", "web", 1)

	s.mustCLI(t, "token", "delete", tokenID(t, s, "web"))
	s.waitInstances(t, 5*time.Second, "the revoked token's instance gone", "web", 0)
	if !strings.Contains(s.logText(), "was revoked") {
		t.Errorf("no log line for the ended stream: %s", tail(s.logText(), 10))
	}
	// The proxy keeps serving its app with what it had; it cannot come
	// back with the revoked token.
	p.waitReady(t)
	if strings.Contains(s.logText(), "proxy connected") && strings.Count(s.logText(), "proxy connected") > 1 {
		t.Error("the proxy registered again with a revoked token")
	}
}

// A token made with --ttl stops working at its expiry, streams included.
func TestAttackExpiredToken(t *testing.T) {
	s := startServer(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	out := s.mustCLI(t, "token", "create", "--service", "web", "--ttl", "10s", "-o", file)
	if !strings.Contains(out, "mode 0600") {
		t.Errorf("token create -o: %s", out)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, %v", fi, err)
	}
	// -o never overwrites: the token could land in a file others read.
	if out, code := s.cli(t, "token", "create", "--service", "web", "-o", file); code == 0 {
		t.Errorf("token create -o over an existing file: %s", out)
	}
	a := startApp(t, "web")
	admin := trellistest.FreePort(t)
	p := &sidecar{proc: start(t, "proxy-web", nil, "proxy", "--service", "web", "--app-port", strconv.Itoa(a.port),
		"--server", s.addr, "--ca-file", s.caFile, "--token-file", file, "--state-dir", t.TempDir(),
		"--admin-port", strconv.Itoa(admin), "--log-level", "debug", "--health-interval", "250ms"),
		admin: fmt.Sprintf("127.0.0.1:%d", admin)}
	p.waitReady(t)
	s.waitInstances(t, 10*time.Second, "web registered", "web", 1)
	s.waitInstances(t, 20*time.Second, "the expired token's instance gone", "web", 0)
	if !strings.Contains(s.logText(), "token expired") {
		t.Errorf("no log line for the expired token: %s", tail(s.logText(), 10))
	}
	secret, _ := os.ReadFile(file)
	_, err := clientFor(t, s, strings.TrimSpace(string(secret))).Roots(t.Context())
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("API call with the expired token: %v", err)
	}
	var toks []v1.Token
	json.Unmarshal([]byte(s.mustCLI(t, "get", "tokens", "-o", "json")), &toks)
	for _, tk := range toks {
		if strings.Join(tk.Services, ",") == "web" && (tk.ExpiresAt == nil || tk.LastUsedAt == nil) {
			t.Errorf("token %s: expiresAt %v, lastUsedAt %v; want both", tk.ID, tk.ExpiresAt, tk.LastUsedAt)
		}
	}
}

// One service's token could overwrite another service's proxy status
// record by registering the same instance ID.
func TestAttackStatusScopedToService(t *testing.T) {
	s := startServer(t)
	a, b := startApp(t, "a"), startApp(t, "b")
	s.startProxy(t, proxyOpts{service: "a", appPort: a.port, extra: []string{"--instance", "shared"}})
	s.startProxy(t, proxyOpts{service: "b", appPort: b.port, extra: []string{"--instance", "shared"}})
	trellistest.Eventually(t, 10*time.Second, "both proxies' status", func() error {
		ps, err := s.api.Proxies(context.Background())
		if err != nil {
			return err
		}
		got := map[string]bool{}
		for _, p := range ps {
			got[p.Service+"/"+p.Instance] = true
		}
		if !got["a/shared"] || !got["b/shared"] {
			return fmt.Errorf("proxies %v, want a/shared and b/shared", got)
		}
		return nil
	})
}

// The API accepted TLS 1.2 CBC-SHA1 suites.
func TestAttackAPICipherSuites(t *testing.T) {
	s := startServer(t)
	for _, tc := range []struct {
		suite uint16
		ok    bool
	}{
		{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, false},
		{tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, false},
		{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, false},
		{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, true},
		{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, true},
	} {
		c, err := tls.Dial("tcp", s.addr, &tls.Config{
			InsecureSkipVerify: true, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12,
			CipherSuites: []uint16{tc.suite},
		})
		if err == nil {
			c.Close()
		}
		if (err == nil) != tc.ok {
			t.Errorf("%s: handshake err = %v, want ok=%v", tls.CipherSuiteName(tc.suite), err, tc.ok)
		}
	}
	s.mustCLI(t, "get", "services")
}

// Smaller ones: a wildcard intention could not be deleted from the CLI
// (the "*" was escaped twice), and more resources in one apply than a
// store transaction holds (128 ops, one of them the write's record) was a
// 500.
func TestAttackCLIEdges(t *testing.T) {
	s := startServer(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "intention.yaml")
	writeFile(in, "kind: Intention\nname: \"*.web\"\nspec: {source: \"*\", destination: web, action: allow}\n")
	s.mustCLI(t, "apply", "-f", in)
	if out, code := s.cli(t, "delete", "intention", "*.web"); code != 0 {
		t.Fatalf("delete intention *.web: exit %d: %s", code, out)
	}
	if out := s.mustCLI(t, "get", "intentions"); strings.Contains(out, "*.web") {
		t.Errorf("intention still there: %s", out)
	}

	var b strings.Builder
	for i := range 128 {
		fmt.Fprintf(&b, "kind: Service\nname: s%d\nspec: {protocol: http}\n---\n", i)
	}
	f := filepath.Join(dir, "many.yaml")
	writeFile(f, b.String())
	out, code := s.cli(t, "apply", "-f", f)
	if code == 0 || !strings.Contains(out, "limit of 127") || strings.Contains(out, "500") {
		t.Errorf("apply of 128 resources: exit %d: %s", code, out)
	}
	if out := s.mustCLI(t, "get", "services"); strings.Contains(out, "s0") {
		t.Errorf("part of the apply landed: %s", out)
	}
}
