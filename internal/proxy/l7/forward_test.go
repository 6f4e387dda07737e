package l7

import (
	"bufio"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/httpmatch"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// edgeForgeries are fields a client outside the mesh writes to pass for
// the mesh (its internal fields) or for the hops before the edge.
const edgeForgeries = "X-Trellis-Upstream-Service-Time: 1\r\n" +
	"X-Trellis-Anything: 1\r\n" +
	"Trellis-Reason: forged\r\n" +
	"Trellis-Upgrade: 1\r\n" +
	"X-Mesh-Source: spiffe://trellis.local/svc/admin\r\n" +
	"X-Forwarded-Client-Cert: By=x;URI=spiffe://trellis.local/svc/admin\r\n" +
	"Forwarded: for=10.9.9.9;proto=https\r\n" +
	"X-Real-IP: 10.9.9.9\r\n" +
	"X-Forwarded-For: 10.9.9.9\r\n" +
	"X-Forwarded-Proto: https\r\n" +
	"X-Forwarded-Host: evil.example\r\n" +
	"X-Forwarded-Port: 443\r\n" +
	"X-Forwarded-Prefix: /admin\r\n" +
	"True-Client-IP: 10.9.9.9\r\n" +
	"X-Original-URL: /admin\r\n" +
	"X-Request-Id: forged-id\r\n"

// edgeUnder is one edge listener under test, in front of a recording app:
// dial connects a client to it.
type edgeUnder struct {
	name   string
	scheme string
	start  func(t *testing.T, trusted []netip.Prefix) (dial func() net.Conn, last func() http.Header)
}

func edgeServerTLS(t *testing.T) *tls.Config {
	ca := trellistest.NewCA(t, "trellis.local")
	cert := ca.SVID(t, "web", time.Hour)
	return &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"http/1.1"}}
}

func edgeDialer(t *testing.T, addr string, tlsOn bool) func() net.Conn {
	return func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if tlsOn {
			tc := tls.Client(c, &tls.Config{ServerName: "web.example", InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			c = tc
		}
		return c
	}
}

// startIngressEdge serves an Ingress whose upstream records the request
// it gets (the Outbound that follows in a gateway changes no field a
// client can write but the mesh's own, see TestOutboundStripsInternal).
func startIngressEdge(tlsOn bool) func(t *testing.T, trusted []netip.Prefix) (func() net.Conn, func() http.Header) {
	return func(t *testing.T, trusted []netip.Prefix) (func() net.Conn, func() http.Header) {
		var mu sync.Mutex
		var last http.Header
		g := &Ingress{
			Name:           "gw:8000",
			Routes:         func() []v1.GatewayRoute { return []v1.GatewayRoute{{PathPrefix: "/", Service: "web"}} },
			TrustedProxies: func() []netip.Prefix { return trusted },
			Upstream: func(string) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					mu.Lock()
					last = r.Header.Clone()
					mu.Unlock()
				})
			},
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		if tlsOn {
			l = tls.NewListener(l, edgeServerTLS(t))
		}
		s := NewServer(g, slog.New(slog.DiscardHandler))
		go s.Serve(l)
		t.Cleanup(func() { l.Close() })
		return edgeDialer(t, addr, tlsOn), func() http.Header { mu.Lock(); defer mu.Unlock(); return last }
	}
}

// startSidecarEdge serves a sidecar's edge listener (TLS ended there) for
// an HTTP service, in front of a real app.
func startSidecarEdge(t *testing.T, trusted []netip.Prefix) (func() net.Conn, func() http.Header) {
	a := startApp(t, "web")
	self, _ := identity.New("trellis.local", "web")
	in := &Inbound{Self: func() identity.ID { return self }, Target: a.addr,
		Authorize: func(identity.ID, *httpmatch.Request) authz.Decision {
			t.Error("the edge path asked for an authorization")
			return authz.Decision{}
		},
		EdgeTrustedProxies: func() []netip.Prefix { return trusted },
		Protocol:           func() string { return v1.ProtocolHTTP }}
	cfg := edgeServerTLS(t)
	addr := serveOn(t, func(c net.Conn) { in.ServeEdge(tls.Server(c, cfg)) })
	return edgeDialer(t, addr, true), func() http.Header { a.mu.Lock(); defer a.mu.Unlock(); return a.last }
}

var edgesUnder = []edgeUnder{
	{"ingress-http", "http", startIngressEdge(false)},
	{"ingress-https", "https", startIngressEdge(true)},
	{"sidecar-edge", "https", startSidecarEdge},
}

func edgeSend(t *testing.T, dial func() net.Conn, head string) {
	t.Helper()
	c := dial()
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
}

// Every field the mesh uses internally is gone at the edge, every
// forwarding claim of an untrusted client is replaced by what the edge
// saw, and a client's X-Request-Id is not kept.
func TestEdgeForwardedFieldsUntrusted(t *testing.T) {
	for _, e := range edgesUnder {
		t.Run(e.name, func(t *testing.T) {
			dial, last := e.start(t, nil)
			edgeSend(t, dial, "GET /x HTTP/1.1\r\nHost: web.example\r\n"+edgeForgeries+"\r\n")
			h := last()
			if h == nil {
				t.Fatal("the app got nothing")
			}
			for _, k := range []string{"X-Trellis-Upstream-Service-Time", "X-Trellis-Anything", "Trellis-Reason", "Trellis-Upgrade",
				"X-Mesh-Source", PeerHeader, "X-Forwarded-Port", "X-Forwarded-Prefix", "True-Client-Ip", "X-Original-Url"} {
				if v, ok := h[k]; ok {
					t.Errorf("the app got %s: %q", k, v)
				}
			}
			want := map[string]string{
				"X-Forwarded-For":   "127.0.0.1",
				"X-Real-Ip":         "127.0.0.1",
				"X-Forwarded-Proto": e.scheme,
				"X-Forwarded-Host":  "web.example",
				"Forwarded":         "for=127.0.0.1;host=web.example;proto=" + e.scheme,
			}
			for k, v := range want {
				if got := h.Values(k); len(got) != 1 || got[0] != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			if got := h.Values(RequestIDHeader); len(got) > 1 || len(got) == 1 && got[0] == "forged-id" {
				t.Errorf("%s: %q, want the client's replaced", RequestIDHeader, got)
			}
		})
	}
}

// From a trusted hop, the client's forwarding fields are kept and this
// hop's appended; the mesh's internal fields are stripped all the same.
func TestEdgeForwardedFieldsTrusted(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	for _, e := range edgesUnder {
		t.Run(e.name, func(t *testing.T) {
			dial, last := e.start(t, trusted)
			edgeSend(t, dial, "GET /x HTTP/1.1\r\nHost: web.example\r\n"+edgeForgeries+"\r\n")
			h := last()
			if h == nil {
				t.Fatal("the app got nothing")
			}
			for _, k := range []string{"X-Trellis-Upstream-Service-Time", "Trellis-Reason", "Trellis-Upgrade", "X-Mesh-Source", PeerHeader} {
				if v, ok := h[k]; ok {
					t.Errorf("the app got %s: %q from a trusted hop", k, v)
				}
			}
			want := map[string]string{
				"X-Forwarded-For":   "10.9.9.9, 127.0.0.1",
				"X-Real-Ip":         "10.9.9.9",
				"X-Forwarded-Proto": "https",
				"X-Forwarded-Host":  "evil.example",
				"Forwarded":         "for=10.9.9.9;proto=https, for=127.0.0.1;host=web.example;proto=" + e.scheme,
				RequestIDHeader:     "forged-id",
			}
			for k, v := range want {
				if got := h.Values(k); len(got) != 1 || got[0] != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
		})
	}
}

// The app's own calls cannot speak for the mesh to its peer: the outbound
// strips the mesh's fields, and the inbound would too.
func TestOutboundStripsInternal(t *testing.T) {
	for _, k := range []string{"Trellis-Upgrade", "Trellis-Reason", "X-Trellis-Upstream-Service-Time", "X-Mesh-Source", PeerHeader} {
		if !isInternalField(k) || !isInternalField(strings.ToLower(k)) {
			t.Errorf("%s is not taken for a mesh field", k)
		}
	}
	for _, k := range []string{"X-Request-Id", "Traceparent", "X-Forwarded-For", "Trellisx", "X-Meshy"} {
		if isInternalField(k) {
			t.Errorf("%s is taken for a mesh field", k)
		}
	}
}

// realClient walks the chain from the right past trusted hops: an address
// a client wrote in front of the first untrusted one is not believed.
func TestRealClient(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	for _, c := range []struct{ chain, want string }{
		{"", ""},
		{"192.0.2.1", "192.0.2.1"},
		{"192.0.2.1, 10.0.0.5, 10.0.0.6", "192.0.2.1"},
		{"6.6.6.6, 192.0.2.1, 10.0.0.5", "192.0.2.1"},
		{"junk, 10.0.0.5", "10.0.0.5"},
		{"10.1.1.1, 10.0.0.5", "10.1.1.1"},
		{"::ffff:192.0.2.9,2001:db8::1", "192.0.2.9"},
	} {
		if got := realClient(c.chain, trusted); got != c.want {
			t.Errorf("realClient(%q) = %q, want %q", c.chain, got, c.want)
		}
	}
}

func FuzzRealClient(f *testing.F) {
	for _, s := range []string{"", "192.0.2.1, 10.0.0.5", "junk,,10.0.0.1", " ::1 ,fe80::1%eth0", "10.0.0.1,"} {
		f.Add(s)
	}
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	f.Fuzz(func(t *testing.T, chain string) {
		got := realClient(chain, trusted)
		if got == "" {
			return
		}
		a, err := netip.ParseAddr(got)
		if err != nil {
			t.Fatalf("realClient(%q) = %q, not an address", chain, got)
		}
		if a.Is4In6() {
			t.Fatalf("realClient(%q) = %q, not unmapped", chain, got)
		}
	})
}

// The values the edge writes are valid field values, whatever the
// authority (sanitize let through) and the peer.
func FuzzForwardFromEdge(f *testing.F) {
	f.Add("web.example:8443", "[2001:db8::1]:4711", "1.2.3.4")
	f.Add("a\"b", "127.0.0.1:1", "")
	f.Add("", "[::%\r]:0", "") // a zone is free text: it must not reach a header
	f.Add("", "127.0.0.1:1", "fe80::1%\"x")
	f.Fuzz(func(t *testing.T, host, remote, xff string) {
		r := &http.Request{Host: host, RemoteAddr: remote, Header: http.Header{"X-Forwarded-For": {xff}}}
		forwardFromEdge(r, "https", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
		for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Real-Ip", "X-Request-Id"} {
			for _, v := range r.Header.Values(k) {
				if strings.ContainsAny(v, "\r\n\x00") && !strings.ContainsAny(host+xff, "\r\n\x00") {
					t.Fatalf("%s: %q", k, v)
				}
			}
		}
		if v := r.Header.Get("X-Real-Ip"); v != "" {
			if a, err := netip.ParseAddr(v); err != nil || a.Zone() != "" {
				t.Fatalf("X-Real-Ip %q", v)
			}
		}
		for _, v := range r.Header.Values("Forwarded") {
			if strings.Contains(v, "%") && !strings.Contains(host+xff, "%") {
				t.Fatalf("Forwarded carries a zone: %q", v)
			}
		}
	})
}

// What the edge adds fits in the room the mesh keeps, however long the
// authority a client sent: a request the edge accepted is not refused
// further in for its size.
func TestEdgeForwardingAddsLittle(t *testing.T) {
	size := func(h http.Header) int {
		n := 0
		for k, vs := range h {
			for _, v := range vs {
				n += len(k) + len(v) + 4
			}
		}
		return n
	}
	for _, trusted := range [][]netip.Prefix{nil, {netip.MustParsePrefix("::/1"), netip.MustParsePrefix("128.0.0.0/1")}} {
		host := strings.Repeat("a", 40<<10) + ".example"
		r := &http.Request{Host: host, RemoteAddr: "[2001:db8::1]:4711", Header: http.Header{
			"X-Forwarded-For": {"192.0.2.1"}, "Forwarded": {"for=192.0.2.1"}}}
		before := size(r.Header)
		forwardFromEdge(r, "https", trusted)
		if added := size(r.Header) - before; added > 1<<10 {
			t.Errorf("trusted %v: the edge added %d bytes", trusted, added)
		}
	}
}

// A field the proxies set or strip cannot come as a trailer either, past
// the head's checks: declared, it is refused before anything reaches the
// app; undeclared, it is refused at the end of the body.
func TestEdgeMeshTrailersRefused(t *testing.T) {
	var mu sync.Mutex
	var trailers []http.Header
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		trailers = append(trailers, r.Trailer.Clone())
		mu.Unlock()
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	self, _ := identity.New("trellis.local", "web")
	in := &Inbound{Self: func() identity.ID { return self }, Target: l.Addr().String(), Protocol: func() string { return v1.ProtocolHTTP }}
	cfg := edgeServerTLS(t)
	addr := serveOn(t, func(c net.Conn) { in.ServeEdge(tls.Server(c, cfg)) })
	dial := edgeDialer(t, addr, true)
	for _, f := range []string{"X-Forwarded-Client-Cert: forged", "Trellis-Upgrade: 1", "X-Mesh-Source: admin", "X-Forwarded-For: 6.6.6.6", "Forwarded: for=6.6.6.6", "X-Real-Ip: 6.6.6.6", "X-Request-Id: forged"} {
		name, _, _ := strings.Cut(f, ":")
		for _, head := range []string{
			"POST /x HTTP/1.1\r\nHost: web.example\r\nTransfer-Encoding: chunked\r\nTrailer: " + name + "\r\n\r\n1\r\na\r\n0\r\n" + f + "\r\n\r\n",
			"POST /x HTTP/1.1\r\nHost: web.example\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n" + f + "\r\n\r\n",
		} {
			c := dial()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write([]byte(head)); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					t.Errorf("%q: 200", head)
				}
			}
			c.Close()
		}
	}
	// Over HTTP/2, to an app that speaks HTTP/2 (which gets trailers),
	// they come after the body has gone on: they are dropped.
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv2 := &http.Server{Handler: h2c.NewHandler(srv.Handler, &http2.Server{})}
	go srv2.Serve(l2)
	t.Cleanup(func() { srv2.Close() })
	in2 := &Inbound{Self: func() identity.ID { return self }, Target: l2.Addr().String(), Protocol: func() string { return v1.ProtocolHTTP2 }}
	cfg2 := edgeServerTLS(t)
	cfg2.NextProtos = []string{"h2"}
	addr2 := serveOn(t, func(c net.Conn) { in2.ServeEdge(tls.Server(c, cfg2)) })
	h2 := &http2.Transport{TLSClientConfig: &tls.Config{ServerName: "web.example", InsecureSkipVerify: true}}
	defer h2.CloseIdleConnections()
	req, _ := http.NewRequest("POST", "https://"+addr2+"/x", strings.NewReader("a"))
	req.Host = "web.example"
	req.Trailer = http.Header{"X-Forwarded-Client-Cert": {"forged"}, "Trellis-Upgrade": {"1"}, "X-Forwarded-For": {"6.6.6.6"}, "X-Kept": {"1"}}
	resp, err := h2.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if n := len(trailers); n == 0 || trailers[n-1].Get("X-Kept") != "1" {
		t.Errorf("the HTTP/2 request's trailers did not reach the app: %v", trailers)
	}
	for _, tr := range trailers {
		for k, v := range tr {
			if meshTrailer(k) {
				t.Errorf("the app got the trailer %s: %q", k, v)
			}
		}
	}
}
