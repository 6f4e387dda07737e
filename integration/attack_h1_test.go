//go:build linux

package integration

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// The HTTP/1.1 attacks of issue 18 (items 1, 2, 3, 5 and 8) against the
// real binary: raw bytes to a sidecar's outbound listener (HTTP/1.1 and
// h2c) and to a gateway's ingress over HTTP and HTTPS, all in front of the
// same sidecar and an app that records every byte it receives. A refused
// request gets its status, the connection closes, no byte of it reaches
// the app, the refusal is counted, and the listener still serves.

// h1App is the app: it records every byte and answers what it can read.
type h1App struct {
	port int
	mu   sync.Mutex
	got  bytes.Buffer
}

type h1AppConn struct {
	net.Conn
	a *h1App
}

func (c h1AppConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.a.mu.Lock()
	c.a.got.Write(p[:n])
	c.a.mu.Unlock()
	return n, err
}

type h1AppListener struct {
	net.Listener
	a *h1App
}

func (l h1AppListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return h1AppConn{c, l.a}, nil
}

func h1StartApp(t *testing.T) *h1App {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &h1App{port: l.Addr().(*net.TCPAddr).Port}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "app: %s %s %q host=%s", r.Method, r.URL.RequestURI(), b, r.Host)
	})}
	go srv.Serve(h1AppListener{l, a})
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *h1App) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.got.Len()
}

func (a *h1App) since(n int) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return string(a.got.Bytes()[n:])
}

// h1Target is a listener under attack.
type h1Target struct {
	name  string
	host  string // what requests name in Host
	dial  func() (net.Conn, error)
	admin string // the admin address of the process serving it
	proc  *proc
}

type h1Case struct {
	name      string
	req       string // HOST stands for the listener's host
	status    int
	closed    bool
	reaches   bool
	tlsOnly   bool
	plainOnly bool
	slow      bool   // waits for the body read timeout (30 s)
	body      string // in the response (the app's echo), if set
}

func h1Cases() []h1Case {
	post := "POST / HTTP/1.1\r\nHost: HOST\r\n"
	chunked := post + "Transfer-Encoding: chunked\r\n\r\n"
	var full strings.Builder
	for i := range 99 {
		fmt.Fprintf(&full, "X-Fill-%02d: %s\r\n", i, strings.Repeat("f", 600))
	}
	return []h1Case{
		{name: "CL and TE, smuggled GET", req: post + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "TE chunked, identity", req: post + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", status: 501, closed: true},
		{name: "TE chunked twice", req: post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "TE xchunked", req: post + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", status: 501, closed: true},
		{name: "TE on HTTP/1.0", req: "POST / HTTP/1.0\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "TE, space before the colon", req: post + "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "TE folded", req: post + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "CL with a sign", req: post + "Content-Length: +5\r\n\r\nhello", status: 400, closed: true},
		{name: "CL with leading zeros", req: post + "Content-Length: 005\r\n\r\nhello", status: 400, closed: true},
		{name: "CL twice, different", req: post + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", status: 400, closed: true},
		{name: "chunk size overflowing", req: chunked + "fffffffffffffffff1\r\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "chunk extension over the limit", req: chunked + "5;x=" + strings.Repeat("a", 5000) + "\r\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "chunk extension, quoted", req: chunked + "5;n=\"a;b\"\r\nhello\r\n0\r\n\r\n", status: 200, reaches: true},
		{name: "bare LF after a chunk size", req: chunked + "5\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "bare LF after chunk data", req: chunked + "5\r\nhello\n0\r\n\r\n", status: 400, closed: true},
		{name: "bare LF in the head", req: "GET / HTTP/1.1\nHost: HOST\n\n", status: 400, closed: true},
		{name: "bare CR in the head", req: "GET / HTTP/1.1\rHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "chunked body missing its last CRLF", req: chunked + "5\r\nhello\r\n0\r\n", status: 408, closed: true, slow: true},
		{name: "two spaces", req: "GET  / HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "a tab", req: "GET\t/ HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "HTTP/1.2", req: "GET / HTTP/1.2\r\nHost: HOST\r\n\r\n", status: 505, closed: true},
		{name: "HTTP/2.0", req: "GET / HTTP/2.0\r\nHost: HOST\r\n\r\n", status: 505, closed: true},
		{name: "Connection: close", req: "GET / HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n", status: 200, closed: true, reaches: true},
		{name: "HTTP/1.0", req: "GET / HTTP/1.0\r\nHost: HOST\r\n\r\n", status: 200, closed: true, reaches: true},
		{name: "HTTP/1.0 keep-alive", req: "GET / HTTP/1.0\r\nHost: HOST\r\nConnection: keep-alive\r\n\r\n", status: 200, reaches: true},
		{name: "absolute-form, other Host: the target's wins", req: "GET http://admin-svc/ HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 200, reaches: true, body: "host=admin-svc", plainOnly: true},
		{name: "absolute-form for another server name, Host this one", req: "GET https://other.example.test/ HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 421, closed: true, tlsOnly: true},
		{name: "absolute-form, same Host", req: "GET http://HOST/x HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 200, reaches: true},
		{name: "absolute-form for another server name", req: "GET https://other.example.test/ HTTP/1.1\r\nHost: other.example.test\r\n\r\n", status: 421, closed: true, tlsOnly: true},
		{name: "Host the server name did not name", req: "GET / HTTP/1.1\r\nHost: other.example.test\r\n\r\n", status: 421, closed: true, tlsOnly: true},
		{name: "CONNECT", req: "CONNECT HOST:443 HTTP/1.1\r\nHost: HOST:443\r\n\r\n", status: 405, closed: true},
		{name: "OPTIONS *", req: "OPTIONS * HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 200, reaches: true},
		{name: "a fragment", req: "GET /a#frag HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "overlong UTF-8", req: "GET /a/%c0%ae%c0%ae/admin HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "invalid UTF-8", req: "GET /a%ff HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "raw 0xff", req: "GET /a\xff HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "the most a client may send", req: "GET / HTTP/1.1\r\nHost: HOST\r\n" + full.String() + "\r\n", status: 200, reaches: true},
		{name: "101 fields", req: "GET / HTTP/1.1\r\nHost: HOST\r\n" + strings.Repeat("X-A: b\r\n", 100) + "\r\n", status: 431, closed: true},
		{name: "upgrade with a body", req: "GET / HTTP/1.1\r\nHost: HOST\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello", status: 400},
		{name: "obs-fold", req: "GET / HTTP/1.1\r\nHost: HOST\r\nX-A: a\r\n b\r\n\r\n", status: 400, closed: true},
	}
}

func TestH1AttackListeners(t *testing.T) {
	s := startServer(t)
	app := h1StartApp(t)
	httpPort, httpsPort := trellistest.FreePort(t), trellistest.FreePort(t)
	frontWeb(t, s, frontHTTP(httpPort), frontHTTPS(httpsPort))
	s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	up, upPort := loopAddr(t)
	client := s.startProxy(t, proxyOpts{service: "client", appPort: app.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	gw, gwAdmin := s.startFront(t)
	roots := meshRoots(t, s)
	plain := func(addr string) func() (net.Conn, error) {
		return func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }
	}
	httpAddr := "127.0.0.1:" + strconv.Itoa(httpPort)
	httpsAddr := "127.0.0.1:" + strconv.Itoa(httpsPort)
	targets := []h1Target{
		{"outbound", "web", plain(up), client.admin, client.proc},
		{"ingress-http", "web.example.test", plain(httpAddr), gwAdmin, gw},
		{"ingress-https", "web.example.test", func() (net.Conn, error) {
			return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", httpsAddr,
				&tls.Config{ServerName: "web.example.test", RootCAs: roots, NextProtos: []string{"http/1.1"}})
		}, gwAdmin, gw},
	}
	for _, tg := range targets {
		trellistest.Eventually(t, 30*time.Second, tg.name+" serving", func() error {
			return h1Valid(tg)
		})
	}

	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			for _, tc := range h1Cases() {
				if tc.tlsOnly && tg.name != "ingress-https" || tc.plainOnly && tg.name == "ingress-https" {
					continue
				}
				t.Run(tc.name, func(t *testing.T) {
					if tc.slow {
						t.Parallel() // 30 s each: wait for them together
					}
					h1Run(t, app, tg, tc)
				})
			}
		})
	}

	// Counted and logged, with the reason; and still serving.
	for _, tg := range targets {
		if n := h1Rejected(t, tg.admin); n == 0 {
			t.Errorf("%s: trellis_http_requests_rejected_total is 0", tg.name)
		}
		if !regexp.MustCompile(`HTTP/1.1 request refused.*reason=framing`).MatchString(tg.proc.logText()) {
			t.Errorf("%s: no log line of a refused request with its reason", tg.name)
		}
		if err := h1Valid(tg); err != nil {
			t.Errorf("%s no longer serves: %v", tg.name, err)
		}
	}
}

// h1Valid sends a valid request and wants 200 from the app.
func h1Valid(tg h1Target) error {
	c, err := tg.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET /ok HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", tg.host)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "app:") {
		return fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return nil
}

func h1Run(t *testing.T, app *h1App, tg h1Target, tc h1Case) {
	req := strings.ReplaceAll(tc.req, "HOST", tg.host)
	before := app.len()
	c, err := tg.dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(45 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != tc.status {
		t.Fatalf("status %d (%q), want %d", resp.StatusCode, body, tc.status)
	}
	if !strings.Contains(string(body), tc.body) {
		t.Errorf("response %q, want it to contain %q", body, tc.body)
	}
	if tc.closed {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var ne net.Error
		if n, err := br.Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("connection still open after the response (read %d, %v), want closed", n, err)
		}
	}
	seen := app.since(before) // the next request is not this one's
	if !tc.closed {
		fmt.Fprintf(c, "GET /next HTTP/1.1\r\nHost: %s\r\n\r\n", tg.host)
		next, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("connection not serving after the response: %v", err)
		}
		io.Copy(io.Discard, next.Body)
		if next.StatusCode != 200 {
			t.Errorf("next request: status %d, want 200", next.StatusCode)
		}
	}
	if tc.slow {
		return // other cases run meanwhile: the app's log is theirs too
	}
	switch got := seen; {
	case tc.reaches && got == "":
		t.Errorf("the request did not reach the app")
	case !tc.reaches && got != "":
		t.Errorf("the app received %d bytes of a refused request:\n%q", len(got), got)
	}
}

// h1Rejected sums trellis_http_requests_rejected_total on an admin port.
func h1Rejected(t *testing.T, admin string) float64 {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "trellis_http_requests_rejected_total{") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// The sidecar's outbound listener over h2c (prior knowledge, raw frames):
// what applies to HTTP/2 of the same items.
func TestH1AttackOutboundH2C(t *testing.T) {
	s := startServer(t)
	app := h1StartApp(t)
	applyYAML(t, s, "kind: Service\nname: web\nspec: {protocol: http}\n---\n"+
		"kind: Intention\nname: client.web\nspec: {source: client, destination: web, action: allow}\n")
	s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	up, upPort := loopAddr(t)
	s.startProxy(t, proxyOpts{service: "client", appPort: app.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	var full, tooMany []hpack.HeaderField
	for i := range 100 {
		full = append(full, hpack.HeaderField{Name: fmt.Sprintf("x-fill-%02d", i), Value: strings.Repeat("f", 590)})
	}
	for range 101 {
		tooMany = append(tooMany, hpack.HeaderField{Name: "x-a", Value: "b"})
	}
	trellistest.Eventually(t, 30*time.Second, "h2c serving", func() error {
		if st, err := h1H2C(up, "/", nil); err != nil || st != 200 {
			return fmt.Errorf("status %d, %v", st, err)
		}
		return nil
	})
	for _, tc := range []struct {
		name    string
		path    string
		fields  []hpack.HeaderField
		status  int
		reaches bool
	}{
		{"a fragment", "/a#frag", nil, 400, false},
		{"overlong UTF-8", "/a/%c0%ae%c0%ae/admin", nil, 400, false},
		{"invalid UTF-8", "/a%ff", nil, 400, false},
		{"raw 0xff", "/a\xff", nil, 400, false},
		{"the most a client may send", "/", full, 200, true},
		{"101 fields", "/", tooMany, 431, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := app.len()
			st, err := h1H2C(up, tc.path, tc.fields)
			if err != nil {
				t.Fatal(err)
			}
			if st != tc.status {
				t.Fatalf("status %d, want %d", st, tc.status)
			}
			switch got := app.since(before); {
			case tc.reaches && got == "":
				t.Errorf("the request did not reach the app")
			case !tc.reaches && got != "":
				t.Errorf("the app received %d bytes of a refused request:\n%q", len(got), got)
			}
		})
	}
}

// h1H2C sends one GET over a new h2c connection and returns its status,
// after checking that the connection still answers a PING.
func h1H2C(addr, path string, extra []hpack.HeaderField) (int, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(64<<10, nil)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range append([]hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "web"}, {Name: ":path", Value: path}}, extra...) {
		enc.WriteField(f)
	}
	block := hb.Bytes()
	first := block[:min(len(block), 16<<10)]
	rest := block[len(first):]
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndStream: true, EndHeaders: len(rest) == 0}); err != nil {
		return 0, err
	}
	for len(rest) > 0 {
		n := min(len(rest), 16<<10)
		fr.WriteContinuation(1, n == len(rest), rest[:n])
		rest = rest[n:]
	}
	status := 0
	for status == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			return 0, err
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			fmt.Sscan(f.PseudoValue("status"), &status)
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			return 0, fmt.Errorf("stream reset: %v", f.ErrCode)
		case *http2.GoAwayFrame:
			return 0, fmt.Errorf("GOAWAY %v", f.ErrCode)
		}
	}
	fr.WritePing(false, [8]byte{1})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return status, fmt.Errorf("connection not serving after the response: %w", err)
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
			return status, nil
		}
	}
}
