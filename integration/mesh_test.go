//go:build linux

package integration

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// pair is a server with an app "web" behind a sidecar and a "client"
// sidecar whose upstream listener reaches web.
type pair struct {
	srv      *server
	web      *app
	webProxy *sidecar
	client   *sidecar
	upstream string // client's local listener for web
}

func startPair(t *testing.T, serverFlags ...string) *pair {
	t.Helper()
	s := startServer(t, serverFlags...)
	// A new mesh denies by default: client may call web by intention.
	s.mustCLI(t, "intention", "allow", "client", "web")
	web := startApp(t, "web")
	wp := s.startProxy(t, proxyOpts{service: "web", appPort: web.port})
	up, upPort := loopAddr(t)
	cp := s.startProxy(t, proxyOpts{service: "client", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	p := &pair{srv: s, web: web, webProxy: wp, client: cp, upstream: up}
	trellistest.Eventually(t, 10*time.Second, "call through the mesh", func() error {
		got, err := get(up)
		if err == nil && got != "web" {
			err = fmt.Errorf("got %q, want web", got)
		}
		return err
	})
	return p
}

func (p *pair) webEndpoint(t *testing.T) string {
	t.Helper()
	ins, err := p.srv.api.Instances(context.Background(), "web")
	if err != nil || len(ins) != 1 {
		t.Fatalf("instances of web = %v, %v; want 1", ins, err)
	}
	return fmt.Sprintf("%s:%d", ins[0].Address, ins[0].Port)
}

func TestSVIDShapeAndCerts(t *testing.T) {
	p := startPair(t)
	resp, err := http.Get("http://" + p.client.admin + "/certs")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c struct {
		SpiffeID string `json:"spiffeId"`
		Chain    string `json:"chain"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	if c.SpiffeID != "spiffe://trellis.local/svc/client" {
		t.Errorf("/certs spiffeId = %q, want spiffe://trellis.local/svc/client", c.SpiffeID)
	}
	chain, err := ca.ParseCertificates([]byte(c.Chain))
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != c.SpiffeID {
		t.Errorf("leaf URI SANs = %v, want exactly [%s]", leaf.URIs, c.SpiffeID)
	}
	if ttl := leaf.NotAfter.Sub(time.Now()); ttl < 23*time.Hour || ttl > 25*time.Hour {
		t.Errorf("SVID lifetime left = %v, want about 24h", ttl)
	}

	// /metrics counts the call startPair made, under the documented names.
	mresp, err := http.Get("http://" + p.client.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer mresp.Body.Close()
	body, _ := io.ReadAll(mresp.Body)
	for _, want := range []string{
		`trellis_tcp_connections_total{direction="outbound",result="ok",service="web"}`,
		`trellis_tls_handshakes_total{result="ok",side="client"}`,
		`trellis_proxy_control_plane_connected 1`,
		`trellis_proxy_app_healthy 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestInboundRefusesWrongPeers(t *testing.T) {
	p := startPair(t)
	ep := p.webEndpoint(t)
	dial := func(cfg *tls.Config) error {
		cfg.NextProtos = []string{"trellis/h2"}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", ep, cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		// TLS 1.3 reports a refused client certificate on the first read.
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil // connection held open: accepted
		}
		return err
	}
	if err := dial(&tls.Config{InsecureSkipVerify: true}); err == nil {
		t.Error("connection without a client certificate was accepted")
	}
	other := trellistest.NewCA(t, "trellis.local")
	if err := dial(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*other.SVID(t, "client", 0)}}); err == nil {
		t.Error("connection with a certificate from another CA was accepted")
	}

	// A valid SVID of another service is refused by intention under
	// default deny, while the allowed client still passes.
	p.srv.mustCLI(t, "intention", "allow", "client", "web")
	applyYAML(t, p.srv, "kind: Mesh\nname: default\nspec:\n  defaultPolicy: deny\n")
	up, upPort := loopAddr(t)
	p.srv.startProxy(t, proxyOpts{service: "intruder", appPort: p.web.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	if got, err := get(up); err == nil {
		t.Errorf("intruder reached web: %q", got)
	}
	if got, err := get(p.upstream); err != nil || got != "web" {
		t.Errorf("allowed client: %q, %v", got, err)
	}

	// A token scoped to client cannot obtain web's identity.
	tok := strings.TrimSpace(p.srv.mustCLI(t, "token", "create", "--service", "client"))
	caPEM := []byte(p.srv.caPEM(t))
	c, _ := client.New(client.Config{Addr: p.srv.addr, Token: tok, CAPEM: caPEM})
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	_, err := c.Sign(context.Background(), "web", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusForbidden {
		t.Errorf("signing web with a client token: err = %v, want HTTP 403", err)
	}
}

func (s *server) caPEM(t *testing.T) string {
	r, err := s.api.Roots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return r.RootsPEM
}

func applyYAML(t *testing.T, s *server, doc string) {
	t.Helper()
	f := t.TempDir() + "/r.yaml"
	if err := writeFile(f, doc); err != nil {
		t.Fatal(err)
	}
	s.mustCLI(t, "apply", "-f", f)
}

func TestIntentionDenyAndAllow(t *testing.T) {
	p := startPair(t)
	// One TCP connection, opened before the deny, that must be cut by it.
	old, err := net.Dial("tcp", p.upstream)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	br := bufio.NewReader(old)
	oldGet := func() error {
		old.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(old, "GET / HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.ReadAll(resp.Body)
		return err
	}
	if err := oldGet(); err != nil {
		t.Fatalf("first request on the old connection: %v", err)
	}
	if err := oldGet(); err != nil {
		t.Fatalf("second request on the old connection (keep-alive): %v", err)
	}

	denied := time.Now()
	p.srv.mustCLI(t, "intention", "deny", "client", "web")
	trellistest.Eventually(t, 5*time.Second, "new connections fail after deny", func() error {
		if _, err := get(p.upstream); err == nil {
			return errors.New("call still succeeds")
		}
		return nil
	})
	trellistest.Eventually(t, 5*time.Second-time.Since(denied), "connection opened before the deny is cut", func() error {
		if err := oldGet(); err == nil {
			return errors.New("call on an old connection still succeeds")
		}
		return nil
	})
	t.Logf("deny effective after %v", time.Since(denied))

	p.srv.mustCLI(t, "intention", "allow", "client", "web")
	trellistest.Eventually(t, 5*time.Second, "calls succeed after allow", func() error {
		_, err := get(p.upstream)
		return err
	})

	// Default deny: a pair with no intention fails; listing it passes.
	p.srv.mustCLI(t, "delete", "intention", "client.web")
	applyYAML(t, p.srv, "kind: Mesh\nname: default\nspec:\n  defaultPolicy: deny\n")
	trellistest.Eventually(t, 5*time.Second, "unlisted pair fails under default deny", func() error {
		if _, err := get(p.upstream); err == nil {
			return errors.New("call still succeeds")
		}
		return nil
	})
	p.srv.mustCLI(t, "intention", "allow", "client", "web")
	trellistest.Eventually(t, 5*time.Second, "listed pair passes under default deny", func() error {
		_, err := get(p.upstream)
		return err
	})
}
