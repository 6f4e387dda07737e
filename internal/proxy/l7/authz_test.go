package l7

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/httpmatch"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// sidestepPolicy is client -> web: a few denies, then allow the rest.
var sidestepPolicy = []v1.IntentionSpec{{Source: "client", Destination: "web", Permissions: []v1.IntentionPermission{
	{Action: v1.Deny, HTTP: v1.RouteMatch{Headers: []v1.HeaderMatch{{Name: "host", Exact: "admin.internal"}}}},
	{Action: v1.Deny, HTTP: v1.RouteMatch{Headers: []v1.HeaderMatch{{Name: "x-role", Exact: "admin"}}}},
	{Action: v1.Deny, HTTP: v1.RouteMatch{PathPrefix: "/admin/"}},
	{Action: v1.Deny, HTTP: v1.RouteMatch{Methods: []string{"DELETE"}}},
	{Action: v1.Allow, HTTP: v1.RouteMatch{PathPrefix: "/read/", Headers: []v1.HeaderMatch{{Name: "x-mode", Exact: "read"}}}},
	{Action: v1.Deny, HTTP: v1.RouteMatch{PathPrefix: "/read/"}},
	{Action: v1.Allow, HTTP: v1.RouteMatch{PathPrefix: "/"}},
}}}

// rawRequest sends one HTTP/1.1 request head as written and returns the
// status of the answer.
func rawRequest(t *testing.T, addr, head string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%q: %v", head, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestPermissionSidesteps sends requests written to slip past an
// intention's denies through a real outbound and inbound: none may reach
// the app, and the same requests written plainly still work.
func TestPermissionSidesteps(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	var mu sync.Mutex
	var hosts []string
	a.serve = func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hosts = append(hosts, r.Host)
		mu.Unlock()
	}
	policy := authz.ForDestination("web", v1.Deny, sidestepPolicy)
	if err := policy.Compile(); err != nil {
		t.Fatal(err)
	}
	in := startInbound(t, ca, a, func(peer identity.ID, r *httpmatch.Request) authz.Decision {
		return policy.CheckRequest(peer.Service(), r)
	})
	url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in, Instance: "web-1"}))
	addr := strings.TrimPrefix(url, "http://")

	for _, tc := range []struct {
		name, head string
		want       int
	}{
		{"lowercase method past a deny on DELETE", "delete /x HTTP/1.1\r\nHost: web\r\n\r\n", 405},
		{"unknown method", "FOO /x HTTP/1.1\r\nHost: web\r\n\r\n", 405},
		{"deny by host", "GET / HTTP/1.1\r\nHost: admin.internal\r\n\r\n", 403},
		{"deny by host: case, port, trailing dot", "GET / HTTP/1.1\r\nHost: ADMIN.Internal.:8080\r\n\r\n", 403},
		{"deny by host: absolute-form target", "GET http://admin.internal/ HTTP/1.1\r\nHost: web\r\n\r\n", 403},
		{"host with percent-encoding", "GET / HTTP/1.1\r\nHost: admin%2einternal\r\n\r\n", 400},
		{"comma list in one field", "GET / HTTP/1.1\r\nHost: web\r\nX-Role: user, admin\r\n\r\n", 403},
		{"two fields", "GET / HTTP/1.1\r\nHost: web\r\nX-Role: user\r\nX-Role: admin\r\n\r\n", 403},
		{"value case", "GET / HTTP/1.1\r\nHost: web\r\nX-Role: Admin\r\n\r\n", 403},
		{"quoted element", "GET / HTTP/1.1\r\nHost: web\r\nX-Role: user, \"admin\"\r\n\r\n", 403},
		{"underscore name", "GET / HTTP/1.1\r\nHost: web\r\nX_Role: admin\r\n\r\n", 403},
		{"path without the prefix's slash", "GET /admin HTTP/1.1\r\nHost: web\r\n\r\n", 403},
		{"path case", "GET /ADMIN/users HTTP/1.1\r\nHost: web\r\n\r\n", 403},
		{"path with a fragment", "GET /admin#/x HTTP/1.1\r\nHost: web\r\n\r\n", 400},
		{"path with a trailing slash", "GET /read HTTP/1.1\r\nHost: web\r\n\r\n", 403},
		{"segment parameters", "GET /admin;jsessionid=1/users HTTP/1.1\r\nHost: web\r\n\r\n", 403},
		{"dot segment with parameters", "GET /ok/..;/admin/users HTTP/1.1\r\nHost: web\r\n\r\n", 400},
		{"method override", "POST /x HTTP/1.1\r\nHost: web\r\nX-HTTP-Method-Override: delete\r\nContent-Length: 0\r\n\r\n", 403},
		{"forwarded host", "GET / HTTP/1.1\r\nHost: web\r\nX-Forwarded-Host: admin.internal\r\n\r\n", 403},
		{"allow needs every element", "GET /read/x HTTP/1.1\r\nHost: web\r\nX-Mode: read, write\r\n\r\n", 403},
		{"allow needs every field", "GET /read/x HTTP/1.1\r\nHost: web\r\nX-Mode: read\r\nX-Mode: write\r\n\r\n", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := rawRequest(t, addr, tc.head); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}
	if n := a.hits.Load(); n != 0 {
		t.Fatalf("%d refused requests reached the app", n)
	}

	// Plain requests still pass; the app sees the canonical authority, and
	// for an absolute-form target, its host rather than the Host field.
	for _, head := range []string{
		"GET / HTTP/1.1\r\nHost: web\r\nX-Role: user\r\n\r\n",
		"GET /read/x HTTP/1.1\r\nHost: web\r\nX-Mode: read\r\n\r\n",
		"GET http://web/ HTTP/1.1\r\nHost: admin.internal\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: WEB.:80\r\n\r\n",
	} {
		if got := rawRequest(t, addr, head); got != 200 {
			t.Errorf("%q: got %d, want 200", head, got)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"web", "web", "web", "web:80"}; strings.Join(hosts, " ") != strings.Join(want, " ") {
		t.Errorf("the app saw hosts %q, want %q", hosts, want)
	}
}

// h2Request sends one HTTP/2 request with the header fields as given
// (pseudo-fields first) on a prior-knowledge h2c connection and returns
// the response status.
func h2Request(t *testing.T, addr string, fields ...string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for i := 0; i+1 < len(fields); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
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
			return resetProtocol
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		}
	}
}

// resetProtocol is h2Request's answer for a request the HTTP/2 layer
// found malformed: RST_STREAM PROTOCOL_ERROR (RFC 9113 section 8.1.1).
const resetProtocol = -1

// TestHTTP2AuthoritySidesteps: over HTTP/2 the authority is :authority; a
// Host field that disagrees, or a :path naming another host, is refused.
func TestHTTP2AuthoritySidesteps(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	policy := authz.ForDestination("web", v1.Deny, sidestepPolicy)
	if err := policy.Compile(); err != nil {
		t.Fatal(err)
	}
	in := startInbound(t, ca, a, func(peer identity.ID, r *httpmatch.Request) authz.Decision {
		return policy.CheckRequest(peer.Service(), r)
	})
	url, o := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in, Instance: "web-1"}))
	addr := strings.TrimPrefix(url, "http://")
	req := func(extra ...string) []string {
		return append([]string{":method", "GET", ":scheme", "http", ":path", "/"}, extra...)
	}
	for _, tc := range []struct {
		name   string
		fields []string
		want   int
	}{
		{"deny by :authority", req(":authority", "Admin.Internal."), 403},
		{"Host that disagrees with :authority", req(":authority", "web", "host", "admin.internal"), 400},
		{"two Host fields", req("host", "web", "host", "admin.internal"), 400},
		{"absolute :path", []string{":method", "GET", ":scheme", "http", ":path", "http://admin.internal/", ":authority", "web"}, resetProtocol},
		{"lowercase :method", []string{":method", "delete", ":scheme", "http", ":path", "/", ":authority", "web"}, 405},
		{"method that is no token", []string{":method", "GET /admin/", ":scheme", "http", ":path", "/", ":authority", "web"}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := h2Request(t, addr, tc.fields...); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}
	if n := a.hits.Load(); n != 0 {
		t.Fatalf("%d refused requests reached the app", n)
	}
	if got := h2Request(t, addr, req(":authority", "web")...); got != 200 {
		t.Fatalf("plain request: got %d, want 200", got)
	}
	if got := testutil.ToFloat64(o.Metrics.Refused.WithLabelValues("outbound", "client", "web", ReasonMethod)); got != 2 {
		t.Errorf("outbound refused %v requests for their method, want 2", got)
	}
}

// FuzzSanitizeHead: whatever method, target and Host a client sends, a
// request sanitize lets through has a method from v1.Methods, one
// canonical authority and an origin-form target.
func FuzzSanitizeHead(f *testing.F) {
	f.Add("GET", "/", "web")
	f.Add("get", "http://admin/x", "web")
	f.Add("GET", "https://a:1/b?c", "")
	f.Add("POST", "/a#b", "ADMIN.:80")
	f.Fuzz(func(t *testing.T, method, target, host string) {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		r := &http.Request{Method: method, URL: u, RequestURI: target, Host: host, Header: http.Header{}}
		if u.Host != "" {
			r.Host = u.Host // as http.ReadRequest does
		}
		if sanitize(r) != nil {
			return
		}
		if !slices.Contains(v1.Methods, r.Method) {
			t.Fatalf("method %q passed", r.Method)
		}
		if canon, _, err := httpmatch.CanonicalAuthority(r.Host); err != nil || canon != r.Host {
			t.Fatalf("host %q passed (canonical %q, %v)", r.Host, canon, err)
		}
		if r.URL.Host != "" || r.URL.Scheme != "" || r.URL.User != nil {
			t.Fatalf("target %q left as %v", target, r.URL)
		}
	})
}

// FuzzAcceptedMatchCanFit: what apply accepts as a path or host value,
// some request can fit once the proxy normalized it (apply and the proxy
// agree on what a path and a host are).
func FuzzAcceptedMatchCanFit(f *testing.F) {
	for _, s := range []string{"/admin/", "/a b", "/a;b", "/%", "admin.internal", "Admin.Internal.", "[::1]", "/café"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if v == "" {
			return // not set: matches every request
		}
		valid := func(m v1.RouteMatch) bool {
			r := &v1.Resource{Kind: v1.KindRoute, Name: "web", Route: &v1.RouteSpec{Rules: []v1.RouteRule{{Match: m}}}}
			return r.Validate() == nil
		}
		if valid(v1.RouteMatch{PathExact: v}) {
			// The request that names the path with every byte escaped
			// but '/' must normalize and decode to it.
			var b strings.Builder
			for i := 0; i < len(v); i++ {
				if v[i] == '/' {
					b.WriteByte('/')
				} else {
					fmt.Fprintf(&b, "%%%02X", v[i])
				}
			}
			p, err := NormalizePath(b.String())
			if err != nil {
				t.Fatalf("accepted path %q: request %q refused: %v", v, b.String(), err)
			}
			if dec, err := url.PathUnescape(p); err != nil || dec != v {
				t.Fatalf("accepted path %q: request %q normalizes to %q (%q, %v)", v, b.String(), p, dec, err)
			}
		}
		if valid(v1.RouteMatch{Headers: []v1.HeaderMatch{{Name: "host", Exact: v}}}) {
			_, host, err := httpmatch.CanonicalAuthority(v)
			if err != nil || host != strings.ToLower(strings.TrimSuffix(v, ".")) && !strings.HasPrefix(v, "[") {
				t.Fatalf("accepted host %q: the proxy makes it %q, %v", v, host, err)
			}
		}
	})
}
