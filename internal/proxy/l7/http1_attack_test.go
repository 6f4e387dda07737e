package l7

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// The hostile HTTP/1.1 inputs of issue 18 (items 1, 2, 3, 5 and 8) on
// every listener Server serves: the sidecar's outbound (HTTP/1.1 and h2c
// on one port) and the gateway's ingress over plain TCP and TLS. Each
// request goes as raw bytes over a net.Conn; the app behind the sidecars
// records every byte it receives, so that "refused" means no byte of the
// request reached it.

// loggingApp is the app: it records every byte it is sent and answers
// each request it can read with 200 and what it saw.
type loggingApp struct {
	addr string
	mu   sync.Mutex
	got  bytes.Buffer
	// bodies has, for each request the app handled, "ok" and its body's
	// length or "error" and why its body could not be read.
	bodies []string
}

type loggingConn struct {
	net.Conn
	a *loggingApp
}

func (c loggingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.a.mu.Lock()
	c.a.got.Write(p[:n])
	c.a.mu.Unlock()
	return n, err
}

type loggingListener struct {
	net.Listener
	a *loggingApp
}

func (l loggingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return loggingConn{c, l.a}, nil
}

func startLoggingApp(t *testing.T) *loggingApp {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &loggingApp{addr: l.Addr().String()}
	s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		a.mu.Lock()
		if err != nil {
			a.bodies = append(a.bodies, "error "+err.Error())
		} else {
			a.bodies = append(a.bodies, fmt.Sprintf("ok %d", len(b)))
		}
		a.mu.Unlock()
		fmt.Fprintf(w, "app: %s %s %q host=%s", r.Method, r.URL.RequestURI(), b, r.Host)
	})}
	go s.Serve(loggingListener{l, a})
	t.Cleanup(func() { s.Close() })
	return a
}

// bytes is how many bytes the app has received.
func (a *loggingApp) bytes() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.got.Len()
}

func (a *loggingApp) since(n int) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return string(a.got.Bytes()[n:])
}

// h1Listener is a listener under test: its name, how to connect, and the
// host its requests name.
type h1Listener struct {
	name string
	host string
	dial func(t *testing.T) net.Conn
	srv  *Server
}

// startH1Listeners starts the app, an inbound in front of it, and the
// listeners that reach it: an outbound sidecar listener and an ingress
// over plain TCP and over TLS (server name ingress.test), all sharing one
// Metrics.
func startH1Listeners(t *testing.T) (*loggingApp, []h1Listener, *Metrics) {
	ca := trellistest.NewCA(t, "trellis.local")
	app := startLoggingApp(t)
	in := startInboundFor(t, ca, app.addr, v1.ProtocolHTTP, allowAll)
	pool := l4.NewPool(0, 0, nil)
	t.Cleanup(func() { pool.Close() })
	cfg := ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), l4.ALPN)
	m := NewMetrics(nil)
	out := &Outbound{Service: "web", Source: "client", State: static(mustCompile(t, nil), balance.Endpoint{Addr: in}),
		Conn: func(ctx context.Context, ep balance.Endpoint) (*tunnel.Conn, error) {
			return pool.Get(ctx, ep, "web", cfg)
		},
		Metrics: m,
	}
	ing := &Ingress{Name: "test", Metrics: m,
		Routes:   func() []v1.GatewayRoute { return []v1.GatewayRoute{{PathPrefix: "/", Service: "web"}} },
		Upstream: func(string) http.Handler { return out },
	}
	serve := func(h http.Handler, wrap func(net.Listener) net.Listener) (string, *Server) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := NewServer(h, slog.New(slog.DiscardHandler))
		s.BodyReadTimeout = 300 * time.Millisecond
		s.Rejected = m.Rejected
		go s.Serve(wrap(l))
		t.Cleanup(func() { s.Close() })
		return l.Addr().String(), s
	}
	plain := func(l net.Listener) net.Listener { return l }
	dialer := func(addr string) func(t *testing.T) net.Conn {
		return func(t *testing.T) net.Conn {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
	}
	cert := trellistest.Forge(t, trellistest.ForgeSpec{DNSNames: []string{"ingress.test", "other.test"},
		KeyUsage: x509.KeyUsageDigitalSignature, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, nil)
	roots := x509.NewCertPool()
	roots.AddCert(cert.Cert)
	tlsListener := func(l net.Listener) net.Listener {
		return tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{*cert.TLS()}, NextProtos: []string{"http/1.1"}})
	}

	outAddr, outSrv := serve(out, plain)
	ingAddr, ingSrv := serve(ing, plain)
	tlsAddr, tlsSrv := serve(ing, tlsListener)
	return app, []h1Listener{
		{"outbound", "web", dialer(outAddr), outSrv},
		{"ingress-http", "web", dialer(ingAddr), ingSrv},
		{"ingress-https", "ingress.test", func(t *testing.T) net.Conn {
			c, err := tls.Dial("tcp", tlsAddr, &tls.Config{ServerName: "ingress.test", RootCAs: roots, NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			return c
		}, tlsSrv},
	}, m
}

// h1Case is one input. In req, HOST stands for the listener's host.
type h1Case struct {
	name   string
	req    string
	status int
	closed bool // the connection ends after the response
	// reaches: the request reaches the app (else no byte of it may).
	reaches bool
	// partial: past the read-ahead, the head and some of the body may
	// reach the app, but the request never completes there.
	partial bool
	// appNot, if set, is not in what the app received.
	appNot string
	// body, if set, is in the response (the app's echo of what it got).
	body string
	// tlsOnly, plainOnly: the case applies to the TLS listener only, or
	// to the others only.
	tlsOnly, plainOnly bool
}

func h1Cases() []h1Case {
	post := "POST / HTTP/1.1\r\nHost: HOST\r\n"
	chunked := post + "Transfer-Encoding: chunked\r\n\r\n"
	// 99 fields and the Host: the most a client may send (100 fields),
	// near 60 KiB; the proxies add theirs on the way.
	var full strings.Builder
	for i := range 99 {
		fmt.Fprintf(&full, "X-Fill-%02d: %s\r\n", i, strings.Repeat("f", 600))
	}
	return []h1Case{
		// Item 1: framing.
		{name: "CL and TE", req: post + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "TE and CL", req: post + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "TE chunked, identity", req: post + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", status: 501, closed: true},
		{name: "TE identity", req: post + "Transfer-Encoding: identity\r\nContent-Length: 0\r\n\r\n", status: 400, closed: true},
		{name: "TE chunked twice in one field", req: post + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "TE chunked in two fields", req: post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "TE xchunked", req: post + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", status: 501, closed: true},
		{name: "TE gzip, chunked", req: post + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", status: 501, closed: true},
		{name: "TE empty", req: post + "Transfer-Encoding: \r\n\r\n", status: 400, closed: true},
		{name: "TE on HTTP/1.0", req: "POST / HTTP/1.0\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "TE on HTTP/1.0 alone", req: "POST / HTTP/1.0\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "TE with whitespace before the colon", req: post + "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "TE folded", req: post + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "TE with a tab before the colon", req: post + "Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "CL with a plus sign", req: post + "Content-Length: +5\r\n\r\nhello", status: 400, closed: true},
		{name: "CL with a minus sign", req: post + "Content-Length: -5\r\n\r\nhello", status: 400, closed: true},
		{name: "CL with leading zeros", req: post + "Content-Length: 005\r\n\r\nhello", status: 400, closed: true},
		{name: "CL as a list", req: post + "Content-Length: 5, 5\r\n\r\nhello", status: 400, closed: true},
		{name: "CL twice, equal", req: post + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", status: 400, closed: true},
		{name: "CL twice, different", req: post + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", status: 400, closed: true},
		{name: "CL hex", req: post + "Content-Length: 0x5\r\n\r\nhello", status: 400, closed: true},
		{name: "CL overflowing", req: post + "Content-Length: 99999999999999999999\r\n\r\nhello", status: 400, closed: true},
		{name: "chunk size overflowing", req: chunked + "fffffffffffffffff1\r\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "chunk size 16 hex digits", req: chunked + "0000000000000005\r\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "chunk size not hex", req: chunked + "zz\r\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "chunk size with a sign", req: chunked + "+5\r\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "chunk size with a space before it", req: chunked + " 5\r\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "chunk extension, quoted string", req: chunked + "5;name=\"a;b \\\" c\"\r\nhello\r\n0\r\n\r\n", status: 200, reaches: true, body: `app: POST / "hello"`},
		{name: "chunk extension, unterminated quote", req: chunked + "5;name=\"abc\r\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "chunk extension, CTL in quotes", req: chunked + "5;name=\"a\x01b\"\r\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "chunk extension, not a token", req: chunked + "5;na@me\r\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "chunk extension over the line limit", req: chunked + "5;x=" + strings.Repeat("a", 5000) + "\r\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "chunk extensions over the body limit", req: chunked + strings.Repeat("1;x="+strings.Repeat("a", 3000)+"\r\nA\r\n", 6) + "0\r\n\r\n", status: 400, closed: true},
		{name: "bare LF after a chunk size", req: chunked + "5\nhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "bare LF after chunk data", req: chunked + "5\r\nhello\n0\r\n\r\n", status: 400, closed: true},
		{name: "bare LF after the last chunk", req: chunked + "5\r\nhello\r\n0\n\r\n", status: 400, closed: true},
		{name: "bare LF ending the trailers", req: chunked + "5\r\nhello\r\n0\r\n\n", status: 400, closed: true},
		{name: "bare CR after a chunk size", req: chunked + "5\rhello\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "chunk data longer than its size", req: chunked + "5\r\nhello!\r\n0\r\n\r\n", status: 400, closed: true},
		{name: "trailer naming Content-Length", req: chunked + "5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n", status: 400, closed: true},
		{name: "trailer folded", req: chunked + "5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n", status: 400, closed: true},
		{name: "chunked body missing its last CRLF", req: chunked + "5\r\nhello\r\n0\r\n", status: 408, closed: true},
		{name: "chunked body stalling mid-chunk", req: chunked + "a\r\nhello", status: 408, closed: true},
		{name: "CL body stalling", req: post + "Content-Length: 10\r\n\r\nhello", status: 408, closed: true},
		{name: "chunked body, valid", req: chunked + "5\r\nhello\r\n6;ext\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n", status: 200, reaches: true, body: `app: POST / "hello world"`},
		{name: "chunked body over the read-ahead", req: chunked + "4000\r\n" + strings.Repeat("b", 0x4000) + "\r\n10\r\n" + strings.Repeat("c", 16) + "\r\n0\r\n\r\n", status: 200, reaches: true, body: "ccc\""},
		{name: "chunked body over the read-ahead, then malformed", req: chunked + "4000\r\n" + strings.Repeat("b", 0x4000) + "\r\n10\r\n" + strings.Repeat("c", 16) + "\n0\r\n\r\n", status: 400, closed: true, partial: true},
		{name: "bare LF in the request line", req: "GET / HTTP/1.1\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "bare LF in a field line", req: "GET / HTTP/1.1\r\nHost: HOST\nX-A: b\r\n\r\n", status: 400, closed: true},
		{name: "bare LF ending the head", req: "GET / HTTP/1.1\r\nHost: HOST\r\n\n", status: 400, closed: true},
		{name: "bare LF everywhere", req: "GET / HTTP/1.1\nHost: HOST\n\n", status: 400, closed: true},
		{name: "bare CR as a line end", req: "GET / HTTP/1.1\rHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "bare CR in a value", req: "GET / HTTP/1.1\r\nHost: HOST\r\nX-A: a\rb\r\n\r\n", status: 400, closed: true},

		// Request lines.
		{name: "two spaces", req: "GET  / HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "two spaces before the version", req: "GET /  HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "a tab", req: "GET\t/ HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "a trailing space", req: "GET / HTTP/1.1 \r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "HTTP/1.2", req: "GET / HTTP/1.2\r\nHost: HOST\r\n\r\n", status: 505, closed: true},
		{name: "HTTP/2.0", req: "GET / HTTP/2.0\r\nHost: HOST\r\n\r\n", status: 505, closed: true},
		{name: "HTTP/0.9 style", req: "GET /\r\n\r\n", status: 400, closed: true},
		{name: "lowercase version", req: "GET / http/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "method not a token", req: "G(T / HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},

		// Item 2: Connection: close and HTTP/1.0.
		{name: "Connection: close", req: "GET / HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n", status: 200, closed: true, reaches: true},
		{name: "Connection: keep-alive, close", req: "GET / HTTP/1.1\r\nHost: HOST\r\nConnection: keep-alive, Close\r\n\r\n", status: 200, closed: true, reaches: true},
		{name: "HTTP/1.0", req: "GET / HTTP/1.0\r\nHost: HOST\r\n\r\n", status: 200, closed: true, reaches: true},
		{name: "HTTP/1.0 keep-alive", req: "GET / HTTP/1.0\r\nHost: HOST\r\nConnection: keep-alive\r\n\r\n", status: 200, reaches: true},
		{name: "HTTP/1.1", req: "GET / HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 200, reaches: true},

		// Item 3: authority, fragments, paths.
		{name: "absolute-form, other Host: the target's wins", req: "GET http://admin-svc/ HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 200, reaches: true, body: "host=admin-svc", plainOnly: true},
		{name: "absolute-form for another server name, Host this one", req: "GET https://other.test/ HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 421, closed: true, tlsOnly: true},
		{name: "absolute-form, same Host", req: "GET http://HOST/x?y HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 200, reaches: true, body: `app: GET /x?y ""`},
		{name: "absolute-form, Host malformed", req: "GET http://HOST/ HTTP/1.1\r\nHost: a b\r\n\r\n", status: 400, closed: true},
		{name: "absolute-form, no Host", req: "GET http://HOST/ HTTP/1.1\r\n\r\n", status: 400, closed: true},
		{name: "absolute-form, ftp", req: "GET ftp://HOST/ HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "absolute-form, userinfo", req: "GET http://u@HOST/ HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "absolute-form https naming another server", req: "GET https://other.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n", status: 421, closed: true, tlsOnly: true},
		{name: "Host the server name did not name", req: "GET / HTTP/1.1\r\nHost: other.test\r\n\r\n", status: 421, closed: true, tlsOnly: true},
		{name: "Host the server name named, with a port", req: "GET / HTTP/1.1\r\nHost: INGRESS.test:443\r\n\r\n", status: 200, reaches: true, tlsOnly: true},
		{name: "two Hosts", req: "GET / HTTP/1.1\r\nHost: HOST\r\nHost: other\r\n\r\n", status: 400, closed: true},
		{name: "no Host", req: "GET / HTTP/1.1\r\n\r\n", status: 400, closed: true},
		{name: "CONNECT", req: "CONNECT HOST:443 HTTP/1.1\r\nHost: HOST:443\r\n\r\n", status: 405, closed: true},
		{name: "CONNECT to a path", req: "CONNECT /x HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "CONNECT without a port", req: "CONNECT HOST HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "OPTIONS *", req: "OPTIONS * HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 200, reaches: true},
		{name: "GET *", req: "GET * HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "a fragment", req: "GET /a#frag HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "a fragment after a query", req: "GET /a?b=c#frag HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "overlong UTF-8", req: "GET /a/%c0%ae%c0%ae/admin HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "invalid UTF-8", req: "GET /a%ff HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "a surrogate in UTF-8", req: "GET /a%ed%a0%80 HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "raw 0xff", req: "GET /a\xff HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "raw UTF-8", req: "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 400, closed: true},
		{name: "valid percent-encoded UTF-8", req: "GET /caf%C3%A9 HTTP/1.1\r\nHost: HOST\r\n\r\n", status: 200, reaches: true},

		{name: "upgrade to h2c", req: "GET / HTTP/1.1\r\nHost: HOST\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", status: 400, closed: true},
		{name: "HTTP2-Settings alone", req: "GET / HTTP/1.1\r\nHost: HOST\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", status: 400, closed: true},
		{name: "upgrade with a body", req: "GET / HTTP/1.1\r\nHost: HOST\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello", status: 400},
		{name: "upgrade with a chunked body", req: "GET / HTTP/1.1\r\nHost: HOST\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", status: 400},

		// Item 5: header limits.
		{name: "the most a client may send", req: "GET / HTTP/1.1\r\nHost: HOST\r\n" + full.String() + "\r\n", status: 200, reaches: true},
		{name: "101 fields", req: "GET / HTTP/1.1\r\nHost: HOST\r\n" + strings.Repeat("X-A: b\r\n", 100) + "\r\n", status: 431, closed: true},

		// Item 8: obs-fold.
		{name: "a folded field", req: "GET / HTTP/1.1\r\nHost: HOST\r\nX-A: a\r\n b\r\n\r\n", status: 400, closed: true},
		{name: "a folded field, tab", req: "GET / HTTP/1.1\r\nHost: HOST\r\nX-A: a\r\n\tb\r\n\r\n", status: 400, closed: true},
		{name: "a field line starting with a space", req: "GET / HTTP/1.1\r\n Host: HOST\r\n\r\n", status: 400, closed: true},
	}
}

func TestHTTP1HostileInputs(t *testing.T) {
	app, listeners, m := startH1Listeners(t)
	for _, l := range listeners {
		t.Run(l.name, func(t *testing.T) {
			for _, tc := range h1Cases() {
				tls := l.name == "ingress-https"
				if tc.tlsOnly && !tls || tc.plainOnly && tls {
					continue
				}
				t.Run(tc.name, func(t *testing.T) { runH1Case(t, app, l, m, tc) })
			}
		})
	}
}

func runH1Case(t *testing.T, app *loggingApp, l h1Listener, m *Metrics, tc h1Case) {
	host := l.host
	req := strings.ReplaceAll(tc.req, "HOST", host)
	req = strings.ReplaceAll(req, "INGRESS.test", "INGRESS.TEST")
	before := app.bytes()
	app.mu.Lock()
	handled := len(app.bodies)
	app.mu.Unlock()
	rejected := rejections(m)
	c := l.dial(t)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
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
		if !resp.Close {
			t.Errorf("response without Connection: close")
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := br.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("connection still open after the response (read %d, %v), want closed", n, err)
		}
	}
	// What the app saw of this request (the next one is not its).
	seen := app.since(before)
	if !tc.closed {
		if resp.Close {
			t.Errorf("response with Connection: close, want the connection kept")
		}
		io.WriteString(c, "GET /next HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		next, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("connection not serving after the response: %v", err)
		}
		io.Copy(io.Discard, next.Body)
		if next.StatusCode != 200 {
			t.Errorf("next request on the connection: status %d, want 200", next.StatusCode)
		}
	}
	if tc.partial {
		// The stream was reset when the framing failed. If the reset
		// overtook the request, nothing reached the app; else the app's
		// read of the body fails as its connection closes. Either way it
		// never gets the request whole.
		var got []string
		deadline := time.Now().Add(3 * time.Second)
		for len(got) == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
			app.mu.Lock()
			got = slices.Clone(app.bodies[handled:])
			app.mu.Unlock()
		}
		if len(got) > 1 || len(got) == 1 && !strings.HasPrefix(got[0], "error") {
			t.Errorf("the app read %v, want nothing or one request whose body it could not read", got)
		}
		return
	}
	if tc.appNot != "" && strings.Contains(strings.ToLower(seen), strings.ToLower(tc.appNot)) {
		t.Errorf("the app received %q:\n%s", tc.appNot, seen)
	}
	switch got := seen; {
	case tc.reaches && got == "":
		t.Errorf("the request did not reach the app")
	case !tc.reaches && got != "":
		t.Errorf("the app received %d bytes of a refused request:\n%s", len(got), got)
	}
	if !tc.reaches && tc.status != 404 && tc.status != 405 && tc.status != 431 {
		// Refused by the reader (or, for a path, by sanitize): the reader's
		// refusals are counted.
		if tc.status != 400 || !strings.Contains(string(body), "trellis:") {
			if rejections(m) <= rejected {
				t.Errorf("refusal not counted in %s", "trellis_http_requests_rejected_total")
			}
		}
	}
}

// The same through the sidecar's h2c listener, for the items that apply
// to HTTP/2: fragments and bad UTF-8 in :path, and the header limits.
func TestH2CHostileInputs(t *testing.T) {
	app, listeners, _ := startH1Listeners(t)
	addr := listeners[0].dial(t).RemoteAddr().String()
	var full []hpack.HeaderField
	for i := range 100 {
		full = append(full, hpack.HeaderField{Name: fmt.Sprintf("x-fill-%02d", i), Value: strings.Repeat("f", 590)})
	}
	var tooMany []hpack.HeaderField
	for range 101 {
		tooMany = append(tooMany, hpack.HeaderField{Name: "x-a", Value: "b"})
	}
	for _, tc := range []struct {
		name    string
		path    string
		fields  []hpack.HeaderField
		status  int
		reaches bool
	}{
		{"valid", "/x", nil, 200, true},
		{"a fragment", "/a#frag", nil, 400, false},
		{"overlong UTF-8", "/a/%c0%ae%c0%ae/admin", nil, 400, false},
		{"invalid UTF-8", "/a%ff", nil, 400, false},
		{"raw 0xff", "/a\xff", nil, 400, false},
		{"the most a client may send", "/", full, 200, true},
		{"101 fields", "/", tooMany, 431, false},
		{"a host field that is not :authority", "/", []hpack.HeaderField{{Name: "host", Value: "admin-svc"}}, 400, false},
		{"a host field that is :authority", "/", []hpack.HeaderField{{Name: "host", Value: "web"}}, 200, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := app.bytes()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			status := h2cRequest(t, c, tc.path, tc.fields)
			if status != tc.status {
				t.Fatalf("status %d, want %d", status, tc.status)
			}
			switch got := app.since(before); {
			case tc.reaches && got == "":
				t.Errorf("the request did not reach the app")
			case !tc.reaches && got != "":
				t.Errorf("the app received %d bytes of a refused request:\n%s", len(got), got)
			}
		})
	}
}

// h2cRequest sends one GET with prior-knowledge h2c, raw, and returns the
// response's status; then it checks that the connection still serves (a
// PING is answered).
func h2cRequest(t *testing.T, c net.Conn, path string, extra []hpack.HeaderField) int {
	t.Helper()
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(64<<10, nil)
	fr.MaxHeaderListSize = 1 << 20
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
		t.Fatal(err)
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
			t.Fatalf("read frame: %v", err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			fmt.Sscan(f.PseudoValue("status"), &status)
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			t.Fatalf("stream reset: %v", f.ErrCode)
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v", f.ErrCode)
		}
	}
	fr.WritePing(false, [8]byte{1})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			if errors.Is(err, io.EOF) {
				t.Fatalf("connection closed after the response, want it serving")
			}
			t.Fatalf("read frame: %v", err)
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
			return status
		}
	}
}

// rejections sums trellis_http_requests_rejected_total over its reasons.
func rejections(m *Metrics) float64 {
	sum := 0.0
	for _, r := range []string{"too_large", "line_ending", "request_line", "version", "field", "obs_fold",
		"host", "framing", "body_timeout", "body_incomplete", "misdirected", "malformed"} {
		sum += testutil.ToFloat64(m.Rejected.WithLabelValues(r))
	}
	return sum
}

// The inbound reads the head of an upgrade stream (relayed by another
// sidecar from its client) as strictly as Server does, and refuses an
// upgrade with a body: no byte reaches the app.
func TestInboundUpgradeHeadStrict(t *testing.T) {
	app := startLoggingApp(t)
	self, _ := identity.New("trellis.local", "web")
	peer, _ := identity.New("trellis.local", "client")
	in := &Inbound{Self: func() identity.ID { return self }, Authorize: allowAll, Target: app.addr,
		Protocol: func() string { return v1.ProtocolHTTP }}
	up := "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"CL and TE", up + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"a body", up + "Content-Length: 5\r\n\r\nhello", 400},
		{"bare LF", "GET /ws HTTP/1.1\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400},
		{"obs_fold", up + "X-A: a\r\n b\r\n\r\n", 400},
		{"h2c", "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: \r\n\r\n", 400},
		{"absolute-form, ftp", "GET ftp://web/ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400},
		{"two spaces", "GET  /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := app.bytes()
			c, s := net.Pipe()
			defer c.Close()
			go in.ServeUpgrade(s, peer)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			go io.WriteString(c, tc.req)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if got := app.since(before); got != "" {
				t.Fatalf("the app received %q", got)
			}
		})
	}
}

// A client's malformed or stalled body is the client's fault, not the
// upstream's: it must not count towards ejecting an endpoint, or a client
// could take healthy endpoints out of service for everyone.
func TestClientBodyFailuresDoNotEject(t *testing.T) {
	_, listeners, m := startH1Listeners(t)
	out := listeners[0]
	bodies := map[string]string{
		"malformed in the read-ahead":   "zz\r\nhello\r\n0\r\n\r\n",
		"malformed past the read-ahead": "4000\r\n" + strings.Repeat("b", 0x4000) + "\r\n10\r\n" + strings.Repeat("c", 16) + "\n0\r\n\r\n",
		"short CL body":                 "",
		"client gone mid-body":          "",
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			for range 8 {
				c := out.dial(t)
				c.SetDeadline(time.Now().Add(5 * time.Second))
				switch name {
				case "short CL body":
					io.WriteString(c, "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\nhello")
				case "client gone mid-body":
					io.WriteString(c, "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\nhello")
					c.(*net.TCPConn).CloseWrite()
				default:
					io.WriteString(c, "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"+body)
				}
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != 400 && resp.StatusCode != 408 {
					t.Fatalf("status %d, want 400 or 408", resp.StatusCode)
				}
				c.Close()
			}
		})
	}
	if n := testutil.ToFloat64(m.Ejections.WithLabelValues("client", "web")); n != 0 {
		t.Fatalf("%v ejections after client body failures, want 0", n)
	}
}

// Over TLS with ALPN h2, as over HTTP/1.1, a request for an authority the
// client's server name did not name gets 421 and reaches nothing.
func TestH2OverTLSMisdirected(t *testing.T) {
	cert := trellistest.Forge(t, trellistest.ForgeSpec{DNSNames: []string{"ingress.test", "other.test"},
		KeyUsage: x509.KeyUsageDigitalSignature, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, nil)
	roots := x509.NewCertPool()
	roots.AddCert(cert.Cert)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var hits sync.Map
	s := NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Store(r.Host, true) }), slog.New(slog.DiscardHandler))
	go s.Serve(tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{*cert.TLS()}, NextProtos: []string{"h2"}}))
	t.Cleanup(func() { s.Close() })
	tr := &http2.Transport{TLSClientConfig: &tls.Config{ServerName: "ingress.test", RootCAs: roots}}
	defer tr.CloseIdleConnections()
	for host, want := range map[string]int{"ingress.test": 200, "INGRESS.test:443": 200, "other.test": 421} {
		req, _ := http.NewRequest("GET", "https://"+l.Addr().String()+"/", nil)
		req.Host = host
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %s over a connection for ingress.test: status %d, want %d", host, resp.StatusCode, want)
		}
	}
	if _, ok := hits.Load("other.test"); ok {
		t.Error("a misdirected request reached the handler")
	}
}

// Paths match case-sensitively (RFC 3986 section 6.2.2.1): a route for
// /api does not take /API, which gets the ingress's 404 and reaches
// nothing.
func TestIngressPathsMatchCaseSensitively(t *testing.T) {
	var mu sync.Mutex
	var served []string
	ing := &Ingress{Name: "case",
		Routes: func() []v1.GatewayRoute { return []v1.GatewayRoute{{PathPrefix: "/api", Service: "web"}} },
		Upstream: func(string) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				served = append(served, r.URL.Path)
				mu.Unlock()
			})
		},
	}
	addr, _ := startServer(t, ing)
	for path, want := range map[string]string{"/api/x": "200", "/API/x": "404", "/Api": "404", "/%61pi/x": "200"} {
		got := exchange(t, addr, "GET "+path+" HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
		if !strings.HasPrefix(got, "HTTP/1.1 "+want+" ") {
			t.Errorf("GET %s: %q, want %s", path, strings.SplitN(got, "\r\n", 2)[0], want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(served, []string{"/api/x", "/api/x"}) {
		t.Errorf("the route served %q, want /api/x twice (for /api/x and /%%61pi/x)", served)
	}
}
