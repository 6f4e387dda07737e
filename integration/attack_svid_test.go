//go:build linux

package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// The attacks of issue 17 item 3 against the real binary: certificates
// that the X509-SVID standard refuses, presented over a sidecar's public
// port with the tunnel's ALPN and protocol (mTLS, HTTP/2, a CONNECT
// stream), as an outbound sidecar would, so that an accepted certificate
// would carry the request to the app; and a fake server with such a
// certificate in front of a real outbound sidecar. Most forgeries are
// signed with the mesh CA's own key, so that only the standard's rules,
// not the chain, can refuse them.

// svidApp is the app behind the attacked sidecar. It counts every byte it
// receives and logs every request, so a test can tell that nothing of an
// attacker's reached it. The sidecar's health check is a TCP connect,
// which sends no byte.
type svidApp struct {
	port  int
	bytes atomic.Int64
	mu    sync.Mutex
	paths []string
}

type svidCountingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c svidCountingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

type svidCountingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l svidCountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return svidCountingConn{c, l.n}, nil
}

func svidStartApp(t *testing.T) *svidApp {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &svidApp{port: l.Addr().(*net.TCPAddr).Port}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.paths = append(a.paths, r.URL.Path)
		a.mu.Unlock()
		io.WriteString(w, "web")
	})}
	go srv.Serve(svidCountingListener{l, &a.bytes})
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *svidApp) log() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.paths...)
}

// svidMeshCA is the mesh CA of s, read from the files it imported, to sign
// forgeries with.
func svidMeshCA(t *testing.T, s *server) *trellistest.Forged {
	t.Helper()
	certPEM, err := os.ReadFile(filepath.Join(s.dataDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(s.caKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Load("trellis.local", certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ca.ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &trellistest.Forged{Cert: c.Certificate(), Key: key}
}

// svidAttack dials ep as an outbound sidecar does (l4.Pool: mTLS with the
// tunnel's ALPN, then HTTP/2) presenting cert, opens a CONNECT stream to
// service web and sends an HTTP request for path through it. It returns
// the app's answer, or why there was none.
func svidAttack(t *testing.T, ep string, cert *tls.Certificate, path string) (string, error) {
	t.Helper()
	pool := l4.NewPool(5*time.Second, time.Second, nil)
	defer pool.Close()
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{l4.ALPN},
		Certificates: []tls.Certificate{*cert},
		// The attacker does not care who the server is.
		InsecureSkipVerify: true,
	}
	tun, err := pool.Get(context.Background(), l4.Endpoint{Addr: ep}, "web", cfg)
	if err != nil {
		return "", fmt.Errorf("handshake: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := tun.Open(ctx, "web")
	if err != nil {
		return "", fmt.Errorf("open stream: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	local, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	remote, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	go s.Splice(remote)
	local.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(local, "GET %s HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n", path)
	b, err := io.ReadAll(local)
	if err != nil {
		return string(b), fmt.Errorf("read answer: %w", err)
	}
	if !strings.Contains(string(b), "\r\n\r\nweb") {
		return string(b), fmt.Errorf("no answer from the app: %q", b)
	}
	return string(b), nil
}

// svidMetric reads one series from a sidecar's /metrics; 0 if absent.
func svidMetric(t *testing.T, admin, series string) int {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return int(f)
		}
	}
	return 0
}

func svidRejections(side, reason string) string {
	return `trellis_tls_peer_rejections_total{reason="` + reason + `",side="` + side + `"}`
}

const svidIntention = "kind: Intention\nname: client.web\nspec: {source: client, destination: web, action: allow}\n"

func TestSVIDAttackForgedClientCertificates(t *testing.T) {
	s := startServerKnownCA(t)
	applyYAML(t, s, svidIntention)
	app := svidStartApp(t)
	web := s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	ins, err := s.api.Instances(context.Background(), "web")
	if err != nil || len(ins) != 1 {
		t.Fatalf("instances of web = %v, %v; want 1", ins, err)
	}
	ep := net.JoinHostPort(ins[0].Address, strconv.Itoa(ins[0].Port))
	meshCA := svidMeshCA(t, s)
	const id = "spiffe://trellis.local/svc/client"

	// The control: a certificate of the exact SVID shape, made the same
	// way, carries a request to the app. So a refused forgery below is
	// refused for what it is, not for how it was sent.
	honest := trellistest.Forge(t, trellistest.SVIDSpec(id), meshCA)
	if got, err := svidAttack(t, ep, honest.TLS(), "/control"); err != nil {
		t.Fatalf("control request with a well-formed SVID: %v (%q)", err, got)
	}
	before := app.bytes.Load()
	if before == 0 {
		t.Fatal("the app counted no byte of the control request")
	}

	spec := func(uri string, f func(*trellistest.ForgeSpec)) trellistest.ForgeSpec {
		s := trellistest.SVIDSpec(uri)
		if f != nil {
			f(&s)
		}
		return s
	}
	pathInter := trellistest.Forge(t, trellistest.SigningSpec("spiffe://trellis.local/svc/intermediate"), meshCA)
	foreign := trellistest.NewCA(t, "trellis.local").Forger(t)
	attacks := []struct {
		name   string
		cert   *tls.Certificate
		reason string // the label of the rejection counter
		logs   string // what the sidecar's log line says
	}{
		{"serverAuth only", trellistest.Forge(t, spec(id, func(s *trellistest.ForgeSpec) { s.EKU = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }), meshCA).TLS(),
			"not_svid", "lacks serverAuth or clientAuth"},
		{"clientAuth only", trellistest.Forge(t, spec(id, func(s *trellistest.ForgeSpec) { s.EKU = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} }), meshCA).TLS(),
			"not_svid", "lacks serverAuth or clientAuth"},
		{"codeSigning only", trellistest.Forge(t, spec(id, func(s *trellistest.ForgeSpec) { s.EKU = []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning} }), meshCA).TLS(),
			"not_svid", "[codeSigning] lacks serverAuth or clientAuth"},
		{"intermediate with a path", trellistest.Forge(t, trellistest.SVIDSpec(id), pathInter).TLS(pathInter),
			"signing_certificate", "a signing certificate's SPIFFE ID has no path"},
		{"empty fragment", trellistest.Forge(t, spec(id+"#", nil), meshCA).TLS(),
			"not_svid", `'#' at byte`},
		{"uppercase scheme", trellistest.Forge(t, spec("SPIFFE://trellis.local/svc/client", nil), meshCA).TLS(),
			"not_svid", `scheme must be`},
		{"foreign root", trellistest.Forge(t, trellistest.SVIDSpec(id), foreign).TLS(),
			"untrusted", "certificate signed by unknown authority"},
		{"expired", trellistest.Forge(t, spec(id, func(s *trellistest.ForgeSpec) {
			s.NotBefore, s.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		}), meshCA).TLS(), "untrusted", "expired"},
		{"leaf is a CA", trellistest.Forge(t, spec(id, func(s *trellistest.ForgeSpec) { s.IsCA = true }), meshCA).TLS(),
			"not_svid", "leaf is a CA"},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			series := svidRejections("server", a.reason)
			n := svidMetric(t, web.admin, series)
			got, err := svidAttack(t, ep, a.cert, "/attack")
			if err == nil {
				t.Fatalf("forged certificate carried a request to the app: %q", got)
			}
			t.Logf("refused: %v", err)
			// At least once: when the server refuses the certificate just
			// after the client's side of the handshake ended, the pool
			// may dial again before the caller could use the connection.
			trellistest.Eventually(t, 5*time.Second, "rejection counted", func() error {
				if m := svidMetric(t, web.admin, series); m <= n {
					return fmt.Errorf("%s = %d, want more than %d", series, m, n)
				}
				return nil
			})
			trellistest.Eventually(t, 5*time.Second, "rejection logged", func() error {
				for _, line := range strings.Split(web.logText(), "\n") {
					if strings.Contains(line, "inbound peer certificate rejected") && strings.Contains(line, "reason="+a.reason) && strings.Contains(line, a.logs) {
						return nil
					}
				}
				return fmt.Errorf("no log line with reason=%s and %q", a.reason, a.logs)
			})
			if b := app.bytes.Load(); b != before {
				t.Fatalf("the app received %d bytes from the attack, want 0", b-before)
			}
		})
	}
	for _, p := range app.log() {
		if p != "/control" {
			t.Errorf("the app served %s, want only the control requests", p)
		}
	}

	// The sidecar still serves: the well-formed certificate, and a real
	// client sidecar.
	if got, err := svidAttack(t, ep, honest.TLS(), "/control"); err != nil {
		t.Fatalf("control request after the attacks: %v (%q)", err, got)
	}
	up, upPort := loopAddr(t)
	s.startProxy(t, proxyOpts{service: "client", appPort: app.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	trellistest.Eventually(t, 10*time.Second, "call through the mesh", func() error {
		got, err := get(up)
		if err == nil && got != "web" {
			err = fmt.Errorf("got %q, want web", got)
		}
		return err
	})
}

// A fake server registered as web, presenting a certificate the standard
// refuses or another service's SVID, is refused by the real outbound
// sidecar in the handshake: it gets no byte of the request, and the
// outbound counts and logs why.
func TestSVIDAttackFakeServer(t *testing.T) {
	s := startServerKnownCA(t)
	applyYAML(t, s, svidIntention)
	meshCA := svidMeshCA(t, s)

	// A web sidecar that advertises 127.0.0.2 while it listens on
	// 127.0.0.1: the fake server takes the advertised address.
	app := svidStartApp(t)
	port := trellistest.FreePort(t)
	decoy := s.startProxy(t, proxyOpts{service: "web", appPort: app.port, extra: []string{
		"--public-port", strconv.Itoa(port), "--advertise", "127.0.0.2"}})
	var current atomic.Pointer[tls.Certificate]
	var afterHandshake atomic.Int64
	fl, err := tls.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(port)), &tls.Config{
		NextProtos: []string{l4.ALPN}, ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return current.Load(), nil },
	})
	if err != nil {
		t.Fatalf("fake server: %v", err)
	}
	trellistest.Serve(t, fl, func(c net.Conn) {
		if c.(*tls.Conn).Handshake() != nil {
			return
		}
		io.Copy(io.Discard, svidCountingConn{c, &afterHandshake})
	})

	up, upPort := loopAddr(t)
	client := s.startProxy(t, proxyOpts{service: "client", appPort: app.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})

	const id = "spiffe://trellis.local/svc/web"
	fakes := []struct {
		name, reason string
		spec         trellistest.ForgeSpec
	}{
		{"clientAuth only", "not_svid", func() trellistest.ForgeSpec {
			s := trellistest.SVIDSpec(id)
			s.EKU = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
			return s
		}()},
		{"another service's SVID", "unauthorized", trellistest.SVIDSpec("spiffe://trellis.local/svc/db")},
		{"empty fragment", "not_svid", trellistest.SVIDSpec(id + "#")},
	}
	for _, f := range fakes {
		t.Run(f.name, func(t *testing.T) {
			current.Store(trellistest.Forge(t, f.spec, meshCA).TLS())
			afterHandshake.Store(0)
			series := svidRejections("client", f.reason)
			n := svidMetric(t, client.admin, series)
			trellistest.Eventually(t, 15*time.Second, "outbound refuses the fake server", func() error {
				if got, err := get(up); err == nil {
					t.Fatalf("call reached the fake server: %q", got)
				}
				if b := afterHandshake.Load(); b != 0 {
					t.Fatalf("the outbound accepted the fake server and sent it %d bytes", b)
				}
				if m := svidMetric(t, client.admin, series); m <= n {
					return fmt.Errorf("%s = %d, want > %d", series, m, n)
				}
				return nil
			})
			log := client.logText()
			if !strings.Contains(log, "upstream peer certificate rejected") || !strings.Contains(log, "reason="+f.reason) {
				t.Errorf("client sidecar's log does not say why:\n%s", tail(log, 20))
			}
		})
	}

	// With the decoy gone and a real web sidecar up, the outbound serves.
	decoy.kill(syscall.SIGTERM)
	s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	trellistest.Eventually(t, 20*time.Second, "call through the mesh", func() error {
		got, err := get(up)
		if err == nil && got != "web" {
			err = fmt.Errorf("got %q, want web", got)
		}
		return err
	})
}
