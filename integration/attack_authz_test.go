//go:build linux

package integration

import (
	"bufio"
	"bytes"
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
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// Attacks on authorization (issue 17 items 5 and 6), run against the real
// binary: each refused request must get its status from a sidecar, reach
// the app with zero bytes, leave a log line and a counter with the reason,
// and leave the sidecar serving.

// authzApp is a logging app: it counts every byte any connection sends
// it and records the requests it served.
type authzApp struct {
	port  int
	bytes atomic.Int64
	mu    sync.Mutex
	log   []string // "METHOD host path"
}

func authzStartApp(t *testing.T) *authzApp {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &authzApp{port: l.Addr().(*net.TCPAddr).Port}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.log = append(a.log, r.Method+" "+r.Host+" "+r.URL.Path)
		a.mu.Unlock()
		io.WriteString(w, "app")
	})}
	go srv.Serve(&authzCountingListener{Listener: l, n: &a.bytes})
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *authzApp) requests() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.log...)
}

type authzCountingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *authzCountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &authzCountingConn{Conn: c, n: l.n}, nil
}

type authzCountingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *authzCountingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// authzRaw sends an HTTP/1.1 request head as written to addr and returns
// the answer's status and body.
func authzRaw(t *testing.T, addr, head string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%q: %v", head, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// authzMetric sums the samples of metric whose labels include every one
// of labels (`name="value"`), or -1 if there is none.
func authzMetric(t *testing.T, admin, metric string, labels ...string) int {
	t.Helper()
	text, err := fetch(http.DefaultClient, "http://"+admin+"/metrics", "")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(metric) + `\{(.*)\} (\S+)$`)
	sum, found := 0, false
	for line := range strings.Lines(text) {
		m := re.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(m[1], l)
		}
		if ok {
			f, _ := strconv.ParseFloat(m[2], 64)
			sum, found = sum+int(f), true
		}
	}
	if !found {
		return -1
	}
	return sum
}

// authzMeshCert gets an SVID for service from the CA as its proxy would:
// what an attacker holding that service's token has.
func authzMeshCert(t *testing.T, s *server, service string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := os.ReadFile(s.tokenFile(t, service))
	signed, err := clientFor(t, s, strings.TrimSpace(string(tok))).Sign(context.Background(), service,
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	var cert tls.Certificate
	rest := []byte(signed.ChainPEM)
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		cert.Certificate = append(cert.Certificate, b.Bytes)
	}
	cert.PrivateKey = key
	return cert
}

// authzH2 sends one HTTP/2 request, its header fields as given, straight
// to a sidecar's public port over mTLS as cert, and returns the status.
// authzResetProtocol is authzH2's answer for a request the HTTP/2 layer
// found malformed: RST_STREAM PROTOCOL_ERROR (RFC 9113 section 8.1.1).
const authzResetProtocol = -1

func authzH2(t *testing.T, addr string, cert tls.Certificate, fields ...string) int {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{
		Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"},
		InsecureSkipVerify: true, // the attacker does not care who answers
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for i := 0; i+1 < len(fields); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no response: %v", err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			n, _ := strconv.Atoi(f.PseudoValue("status"))
			return n
		case *http2.RSTStreamFrame:
			if f.ErrCode != http2.ErrCodeProtocol {
				t.Fatalf("stream reset: %v", f.ErrCode)
			}
			return authzResetProtocol
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY: %v", f.ErrCode)
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		}
	}
}

// TestAuthzL7Sidesteps: deny permissions on host, header and method, and
// requests written to slip past them, to the client's upstream listener
// and, with a stolen client SVID, straight to web's inbound sidecar.
func TestAuthzL7Sidesteps(t *testing.T) {
	s := startServer(t)
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
    - {action: deny, http: {headers: [{name: host, exact: admin.internal}]}}
    - {action: deny, http: {headers: [{name: x-role, exact: admin}]}}
    - {action: deny, http: {methods: [DELETE]}}
    - {action: deny, http: {pathPrefix: /admin/}}
    - {action: allow, http: {pathPrefix: /}}
`)
	app := authzStartApp(t)
	wp := s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	up, upPort := loopAddr(t)
	cp := s.startProxy(t, proxyOpts{service: "client", appPort: app.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	trellistest.Eventually(t, 10*time.Second, "call through the mesh", func() error {
		_, err := get(up)
		return err
	})
	before := app.bytes.Load()

	for _, tc := range []struct {
		name, head string
		want       int
	}{
		{"lowercase method", "delete /x HTTP/1.1\r\nHost: web\r\n\r\n", 405},
		{"deny by host", "GET / HTTP/1.1\r\nHost: admin.internal\r\n\r\n", 403},
		{"host case, port, trailing dot", "GET / HTTP/1.1\r\nHost: Admin.INTERNAL.:80\r\n\r\n", 403},
		{"absolute-form target", "GET http://admin.internal/ HTTP/1.1\r\nHost: web\r\n\r\n", 403},
		{"comma list", "GET / HTTP/1.1\r\nHost: web\r\nX-Role: user, admin\r\n\r\n", 403},
		{"underscore name", "GET / HTTP/1.1\r\nHost: web\r\nX_Role: admin\r\n\r\n", 403},
		{"path without the slash", "GET /admin HTTP/1.1\r\nHost: web\r\n\r\n", 403},
		{"encoded host", "GET / HTTP/1.1\r\nHost: admin%2einternal\r\n\r\n", 400},
		{"segment parameters", "GET /admin;x/users HTTP/1.1\r\nHost: web\r\n\r\n", 403},
		{"dot segment with parameters", "GET /ok/..;/admin/ HTTP/1.1\r\nHost: web\r\n\r\n", 400},
		{"method override", "POST / HTTP/1.1\r\nHost: web\r\nX-HTTP-Method-Override: DELETE\r\nContent-Length: 0\r\n\r\n", 403},
		{"forwarded host", "GET / HTTP/1.1\r\nHost: web\r\nForwarded: host=admin.internal\r\n\r\n", 403},
	} {
		t.Run("outbound/"+tc.name, func(t *testing.T) {
			if got, body := authzRaw(t, up, tc.head); got != tc.want {
				t.Errorf("got %d %q, want %d", got, body, tc.want)
			}
		})
	}

	// An attacker with client's identity skips client's sidecar.
	cert := authzMeshCert(t, s, "client")
	ins, err := s.api.Instances(context.Background(), "web")
	if err != nil || len(ins) != 1 {
		t.Fatalf("instances of web: %v, %v", ins, err)
	}
	public := fmt.Sprintf("%s:%d", ins[0].Address, ins[0].Port)
	req := func(method, path string, extra ...string) []string {
		return append([]string{":method", method, ":scheme", "http", ":path", path}, extra...)
	}
	for _, tc := range []struct {
		name   string
		fields []string
		want   int
	}{
		{"lowercase method", req("delete", "/", ":authority", "web"), 405},
		{"deny by authority", req("GET", "/", ":authority", "ADMIN.internal."), 403},
		{"Host against :authority", req("GET", "/", ":authority", "web", "host", "admin.internal"), 400},
		{"absolute :path", req("GET", "http://admin.internal/", ":authority", "web"), authzResetProtocol},
		{"comma list", req("GET", "/", ":authority", "web", "x-role", "user,admin"), 403},
		{"two fields", req("GET", "/", ":authority", "web", "x-role", "user", "x-role", "admin"), 403},
	} {
		t.Run("inbound/"+tc.name, func(t *testing.T) {
			if got := authzH2(t, public, cert, tc.fields...); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}

	if n := app.bytes.Load() - before; n != 0 {
		t.Errorf("%d bytes of refused requests reached the app: %q", n, app.requests())
	}
	for _, c := range []struct {
		proxy          *sidecar
		direction, why string
	}{
		{cp, "outbound", "bad_method"},
		{cp, "outbound", "bad_host"},
		{wp, "inbound", "permission"},
		{wp, "inbound", "bad_method"},
		{wp, "inbound", "bad_request"},
	} {
		if n := authzMetric(t, c.proxy.admin, "trellis_requests_refused_total", `direction="`+c.direction+`"`, `reason="`+c.why+`"`); n < 1 {
			t.Errorf("%s: trellis_requests_refused_total{direction=%q, reason=%q} = %d, want >= 1", c.proxy.name, c.direction, c.why, n)
		}
	}
	if log := wp.logText(); !strings.Contains(log, "request refused") || !strings.Contains(log, "intention client -> web permission 0 denies") {
		t.Errorf("web's sidecar did not log the refusal with its reason:\n%s", grepLines(log, "refused"))
	}
	if log := cp.logText(); !strings.Contains(log, "request refused") || !strings.Contains(log, "unknown method") {
		t.Errorf("client's sidecar did not log the refusal with its reason:\n%s", grepLines(log, "refused"))
	}

	// Both sidecars still serve, and the app sees the canonical authority.
	if got, body := authzRaw(t, up, "GET http://web/ok HTTP/1.1\r\nHost: admin.internal\r\n\r\n"); got != 200 {
		t.Fatalf("plain request after the attacks: %d %q", got, body)
	}
	if got := authzH2(t, public, cert, req("GET", "/ok2", ":authority", "WEB.")...); got != 200 {
		t.Fatalf("plain HTTP/2 request after the attacks: %d", got)
	}
	reqs := app.requests()
	if len(reqs) < 2 || reqs[len(reqs)-2] != "GET web /ok" || reqs[len(reqs)-1] != "GET web /ok2" {
		t.Errorf("app saw %q, want the last two to be GET web /ok and GET web /ok2", reqs)
	}
}

// TestAuthzDefaultDeny: a new mesh (no Mesh resource) refuses a call no
// intention allows, says so in the log and a metric, and the intention
// opens it.
func TestAuthzDefaultDeny(t *testing.T) {
	s := startServer(t)
	app := authzStartApp(t)
	wp := s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	up, upPort := loopAddr(t)
	cp := s.startProxy(t, proxyOpts{service: "client", appPort: app.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	s.waitInstances(t, 10*time.Second, "web registered", "web", 1)

	trellistest.Eventually(t, 10*time.Second, "refusal logged and counted", func() error {
		if got, err := get(up); err == nil {
			t.Fatalf("call with no intention answered %q", got)
		}
		if !strings.Contains(wp.logText(), "no intention allows client -> web") {
			return fmt.Errorf("web's sidecar log lacks the reason")
		}
		if !strings.Contains(cp.logText(), "no intention allows client -> web") {
			return fmt.Errorf("client's sidecar log lacks the reason")
		}
		if n := authzMetric(t, wp.admin, "trellis_tcp_connections_denied_total", `service="client"`, `reason="no_intention"`); n < 1 {
			return fmt.Errorf("trellis_tcp_connections_denied_total{service=client, reason=no_intention} = %d", n)
		}
		return nil
	})
	if n := app.bytes.Load(); n != 0 {
		t.Errorf("%d bytes reached the app of a call no intention allows", n)
	}
	s.mustCLI(t, "intention", "allow", "client", "web")
	trellistest.Eventually(t, 10*time.Second, "call allowed by intention", func() error {
		_, err := get(up)
		return err
	})
}

// TestAuthzIngressSidesteps: the same attacks through an ingress gateway,
// which evaluates routes before the mesh's intentions do.
func TestAuthzIngressSidesteps(t *testing.T) {
	s := startServer(t)
	port, admin := trellistest.FreePort(t), trellistest.FreePort(t)
	applyYAML(t, s, fmt.Sprintf(`kind: Service
name: web
spec: {protocol: http}
---
kind: Gateway
name: front
spec:
  listeners:
    - port: %d
      protocol: http
      routes: [{pathPrefix: /, service: web}]
---
kind: Intention
name: front.web
spec:
  source: front
  destination: web
  permissions:
    - {action: deny, http: {headers: [{name: host, exact: admin.internal}]}}
    - {action: deny, http: {methods: [DELETE]}}
    - {action: allow, http: {pathPrefix: /}}
`, port))
	app := authzStartApp(t)
	s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	gw := &sidecar{proc: start(t, "gateway", nil, "gateway", "--name", "front", "--listen-addr", "127.0.0.1",
		"--server", s.addr, "--ca-file", s.caFile, "--token-file", s.tokenFile(t, "front"),
		"--admin-port", strconv.Itoa(admin), "--log-level", "debug"), admin: fmt.Sprintf("127.0.0.1:%d", admin)}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	trellistest.Eventually(t, 20*time.Second, "call through the gateway", func() error {
		_, err := get(addr)
		return err
	})
	before := app.bytes.Load()
	for _, tc := range []struct {
		name, head string
		want       int
	}{
		{"lowercase method", "delete / HTTP/1.1\r\nHost: web\r\n\r\n", 405},
		{"unknown method", "PURGE / HTTP/1.1\r\nHost: web\r\n\r\n", 405},
		{"deny by host", "GET / HTTP/1.1\r\nHost: ADMIN.internal.:8000\r\n\r\n", 403},
		{"absolute-form target", "GET http://admin.internal/ HTTP/1.1\r\nHost: web\r\n\r\n", 403},
		{"userinfo", "GET http://web@admin.internal/ HTTP/1.1\r\nHost: web\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, body := authzRaw(t, addr, tc.head); got != tc.want {
				t.Errorf("got %d %q, want %d", got, body, tc.want)
			}
		})
	}
	if n := app.bytes.Load() - before; n != 0 {
		t.Errorf("%d bytes of refused requests reached the app: %q", n, app.requests())
	}
	if n := authzMetric(t, gw.admin, "trellis_requests_refused_total", `direction="ingress"`, `reason="bad_method"`); n < 2 {
		t.Errorf("gateway: trellis_requests_refused_total{direction=ingress, reason=bad_method} = %d, want >= 2", n)
	}
	if log := gw.logText(); !strings.Contains(log, "request refused") || !strings.Contains(log, "unknown method") {
		t.Errorf("the gateway did not log the refusal with its reason:\n%s", grepLines(log, "refused"))
	}
	if got, body := authzRaw(t, addr, "GET /ok HTTP/1.1\r\nHost: web\r\n\r\n"); got != 200 {
		t.Fatalf("plain request after the attacks: %d %q", got, body)
	}
}

// The same over HTTP: the destination's proxy refuses the request, and
// the caller's proxy says at warn level (what trellis up's terminal
// shows) that the destination's policy denied it, with the reason, not
// only the app's error.
func TestAuthzDefaultDenyHTTPBothSides(t *testing.T) {
	s := startServer(t)
	applyYAML(t, s, "kind: Service\nname: web\nspec: {protocol: http}\n")
	app := h1StartApp(t)
	wp := s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	up, upPort := loopAddr(t)
	cp := s.startProxy(t, proxyOpts{service: "client", appPort: app.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	s.waitInstances(t, 10*time.Second, "web registered", "web", 1)
	trellistest.Eventually(t, 10*time.Second, "refusal logged on both sides", func() error {
		if got, err := get(up); err == nil {
			t.Fatalf("call with no intention answered %q", got)
		}
		if log := wp.logText(); !strings.Contains(log, "request refused") || !strings.Contains(log, "no intention allows client -> web") {
			return fmt.Errorf("web's sidecar log lacks the refusal")
		}
		for _, line := range strings.Split(cp.logText(), "\n") {
			if strings.Contains(line, "level=WARN") && strings.Contains(line, "call denied by the destination's policy") &&
				strings.Contains(line, "upstream=web") && strings.Contains(line, "no intention allows client -> web") {
				return nil
			}
		}
		return fmt.Errorf("client's sidecar log lacks a warning with the reason")
	})
}
