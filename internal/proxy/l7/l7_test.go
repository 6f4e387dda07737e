package l7

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/httpmatch"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

func TestRouterMatch(t *testing.T) {
	rt, err := Compile(&v1.RouteSpec{Rules: []v1.RouteRule{
		{Name: "exact", Match: v1.RouteMatch{PathExact: "/health"}},
		{Name: "posts", Match: v1.RouteMatch{PathPrefix: "/api/", Methods: []string{"POST"}}},
		{Name: "canary", Match: v1.RouteMatch{Headers: []v1.HeaderMatch{{Name: "x-canary", Exact: "yes"}}}},
		{Name: "ids", Match: v1.RouteMatch{PathRegex: "/users/[0-9]+"}},
		{Name: "api", Match: v1.RouteMatch{PathPrefix: "/api/"}, PrefixRewrite: "/"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		method, path string
		header       string
		want         string
	}{
		{"GET", "/health", "", "exact"},
		{"GET", "/healthz", "", "default"},
		{"POST", "/api/x", "", "posts"},
		{"GET", "/api/x", "", "api"},
		{"GET", "/other", "x-canary: yes", "canary"},
		{"GET", "/other", "x-canary: no", "default"},
		{"GET", "/users/42", "", "ids"},
		{"GET", "/users/42/posts", "", "default"}, // regexes match the whole path
	} {
		r, _ := http.NewRequest(tc.method, "http://web"+tc.path, nil)
		if tc.header != "" {
			k, v, _ := strings.Cut(tc.header, ": ")
			r.Header.Set(k, v)
		}
		if got := rt.MatchRequest(matchRequest(r)).Name; got != tc.want {
			t.Errorf("%s %s %s: rule %q, want %q", tc.method, tc.path, tc.header, got, tc.want)
		}
	}
	api := rt.rules[4]
	for in, want := range map[string]string{"/api/x": "/x", "/api/": "/", "/apix": "/apix"} {
		if got := api.Rewrite(in); got != want {
			t.Errorf("Rewrite(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWeightsSplit(t *testing.T) {
	rt, err := Compile(&v1.RouteSpec{Rules: []v1.RouteRule{{Targets: []v1.RouteTarget{{Version: "v1", Weight: 90}, {Version: "v2", Weight: 10}}}}})
	if err != nil {
		t.Fatal(err)
	}
	rule := rt.rules[0]
	n := map[string]int{}
	const draws = 10000
	for range draws {
		n[rule.PickVersion()]++
	}
	if share := float64(n["v2"]) / draws; math.Abs(share-0.10) > 0.02 {
		t.Fatalf("v2 got %.3f of %d draws, want 0.10 +- 0.02 (%v)", share, draws, n)
	}
}

// app is a backend that records what it was sent.
type app struct {
	addr  string
	hits  atomic.Int64
	mu    sync.Mutex
	last  http.Header
	serve func(w http.ResponseWriter, r *http.Request)
}

func startApp(t testing.TB, name string) *app {
	a := &app{}
	a.serve = func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%s %s", name, r.URL.Path) }
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		a.mu.Lock()
		a.last = r.Header.Clone()
		a.mu.Unlock()
		a.serve(w, r)
	})}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	a.addr = l.Addr().String()
	return a
}

// startInbound serves L7 mTLS connections for service web in front of a.
func startInbound(t testing.TB, ca *trellistest.CA, a *app, allow func(identity.ID, *httpmatch.Request) authz.Decision) string {
	return startInboundFor(t, ca, a.addr, v1.ProtocolHTTP, allow)
}

func startInboundFor(t testing.TB, ca *trellistest.CA, target, protocol string, allow func(identity.ID, *httpmatch.Request) authz.Decision) string {
	src := ca.Source(t, "web")
	self, _ := identity.New("trellis.local", "web")
	in := &Inbound{Self: func() identity.ID { return self }, Authorize: allow, Target: target, Protocol: func() string { return protocol }}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := src.ServerConfig(nil, l4.ALPN)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				// Raw socket calls under TLS, as the sidecar's inbound
				// makes them (l4.Inbound): benchmarks measure its path.
				tc := tls.Server(netconn.Raw(c), cfg)
				if tc.Handshake() != nil {
					c.Close()
					return
				}
				peer, _ := certs.PeerID(tc.ConnectionState())
				in.ServeConn(tc, peer)
			}()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

func allowAll(identity.ID, *httpmatch.Request) authz.Decision {
	return authz.Decision{Allow: true, Reason: "test"}
}

// startOutbound serves the client app's requests for web and returns the
// URL of its local listener. Each of configure changes the Outbound before
// it serves: afterwards its fields are the serving goroutines'.
func startOutbound(t testing.TB, ca *trellistest.CA, state func() (*Router, []balance.Endpoint), configure ...func(*Outbound)) (string, *Outbound) {
	pool := l4.NewPool(0, 0, nil)
	cfg := ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), l4.ALPN)
	o := &Outbound{Service: "web", Source: "client", State: state,
		Conn: func(ctx context.Context, ep balance.Endpoint) (*tunnel.Conn, error) {
			return pool.Get(ctx, ep, "web", cfg)
		},
		Metrics: NewMetrics(nil), // set here, not by the serving goroutines: tests read it
	}
	for _, f := range configure {
		f(o)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(o, slog.New(slog.DiscardHandler))
	go s.Serve(l)
	t.Cleanup(func() { s.Close(); pool.Close() })
	return "http://" + l.Addr().String(), o
}

func static(rt *Router, eps ...balance.Endpoint) func() (*Router, []balance.Endpoint) {
	return func() (*Router, []balance.Endpoint) { return rt, eps }
}

func mustCompile(t testing.TB, spec *v1.RouteSpec) *Router {
	rt, err := Compile(spec)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func get(t *testing.T, url string, header ...string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func TestProxyHeaders(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	in := startInbound(t, ca, a, allowAll)
	url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in, Instance: "web-1"}))

	code, body, h := get(t, url+"/hello", "X-Forwarded-Client-Cert: By=spiffe://evil/svc/x;URI=spiffe://trellis.local/svc/admin",
		"Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	if code != 200 || body != "web /hello" {
		t.Fatalf("got %d %q", code, body)
	}
	if h.Get(UpstreamTimeHeader) == "" {
		t.Error("no upstream service time on the response")
	}
	a.mu.Lock()
	sent := a.last
	a.mu.Unlock()
	if got, want := sent.Get(PeerHeader), "By=spiffe://trellis.local/svc/web;URI=spiffe://trellis.local/svc/client"; got != want || len(sent.Values(PeerHeader)) != 1 {
		t.Errorf("app saw %s %v, want only %q (the forged one replaced)", PeerHeader, sent.Values(PeerHeader), want)
	}
	if len(sent.Get(RequestIDHeader)) != 36 {
		t.Errorf("app saw request id %q, want a new UUID-shaped one", sent.Get(RequestIDHeader))
	}
	tp := strings.Split(sent.Get("Traceparent"), "-")
	if len(tp) != 4 || tp[1] != "0af7651916cd43dd8448eb211c80319c" || tp[2] == "b7ad6b7169203331" {
		t.Errorf("app saw traceparent %q, want the same trace with a new span", sent.Get("Traceparent"))
	}
	// A request ID that is present is kept.
	get(t, url+"/", "X-Request-Id: keep-me")
	a.mu.Lock()
	defer a.mu.Unlock()
	if got := a.last.Get(RequestIDHeader); got != "keep-me" {
		t.Errorf("request id %q, want the caller's", got)
	}
}

func TestDeniedRequestNeverReachesApp(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	in := startInbound(t, ca, a, func(identity.ID, *httpmatch.Request) authz.Decision {
		return authz.Decision{Reason: "intention client.web"}
	})
	url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in}))
	code, body, _ := get(t, url+"/")
	if code != 403 || !strings.Contains(body, "denied: intention client.web") {
		t.Fatalf("got %d %q, want 403 naming the intention", code, body)
	}
	if a.hits.Load() != 0 {
		t.Fatal("a denied request reached the app")
	}
}

func TestCanarySplitThroughProxies(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	v1app, v2app := startApp(t, "v1"), startApp(t, "v2")
	eps := []balance.Endpoint{
		{Addr: startInbound(t, ca, v1app, allowAll), Instance: "web-1", Version: "v1"},
		{Addr: startInbound(t, ca, v2app, allowAll), Instance: "web-2", Version: "v2"},
	}
	var cur atomic.Pointer[Router]
	cur.Store(mustCompile(t, &v1.RouteSpec{Rules: []v1.RouteRule{{Targets: []v1.RouteTarget{{Version: "v1", Weight: 90}, {Version: "v2", Weight: 10}}}}}))
	url, _ := startOutbound(t, ca, func() (*Router, []balance.Endpoint) { return cur.Load(), eps })

	const n = 10000
	var failed, before1, before2 atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				resp, err := http.Get(url + "/")
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
				if i == n/2 {
					// Shift all traffic to v2 under load.
					before1.Store(v1app.hits.Load())
					before2.Store(v2app.hits.Load())
					cur.Store(mustCompile(t, &v1.RouteSpec{Rules: []v1.RouteRule{{Targets: []v1.RouteTarget{{Version: "v2", Weight: 1}}}}}))
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed across a weight change", failed.Load(), n)
	}
	// Before the change 90/10 (within 2 points; about 5 standard
	// deviations over ~5000 requests), after it 0/100: v1 gets at most the
	// requests that were in flight then.
	h1, h2 := before1.Load(), before2.Load()
	if share := float64(h1) / float64(h1+h2); math.Abs(share-0.9) > 0.02 {
		t.Fatalf("before the change v1 got %d of %d requests (%.3f), want 0.90 +- 0.02", h1, h1+h2, share)
	}
	if late := v1app.hits.Load() - h1; late > 8 {
		t.Fatalf("v1 got %d requests after all traffic moved to v2", late)
	}
}

func TestRetriesMaskFailures(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	var count atomic.Int64
	a.serve = func(w http.ResponseWriter, r *http.Request) {
		if count.Add(1)%10 < 3 { // 30 % fail
			http.Error(w, "boom", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	}
	in := startInbound(t, ca, a, allowAll)
	rt := mustCompile(t, &v1.RouteSpec{Rules: []v1.RouteRule{{Retries: &v1.RetryPolicy{Attempts: 5, On: []string{"5xx"}}}}})
	url, o := startOutbound(t, ca, static(rt, balance.Endpoint{Addr: in}))
	ok := 0
	const n = 2000
	for range n {
		if code, _, _ := get(t, url+"/"); code == 200 {
			ok++
		}
	}
	if float64(ok)/n < 0.999 {
		t.Fatalf("%d of %d succeeded with retries, want >= 99.9 %%", ok, n)
	}
	_ = o
}

func TestTimeoutAndNoEndpoints(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	release := make(chan struct{})
	a.serve = func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	t.Cleanup(func() { close(release) })
	in := startInbound(t, ca, a, allowAll)
	rt := mustCompile(t, &v1.RouteSpec{Rules: []v1.RouteRule{{Name: "slow", Timeout: "300ms"}}})
	url, _ := startOutbound(t, ca, static(rt, balance.Endpoint{Addr: in}))
	start := time.Now()
	code, body, _ := get(t, url+"/")
	took := time.Since(start)
	if code != 504 || !strings.Contains(body, "300ms") {
		t.Fatalf("hung backend: %d %q, want 504 naming the timeout", code, body)
	}
	if took < 270*time.Millisecond || took > 330*time.Millisecond+100*time.Millisecond {
		t.Fatalf("504 after %s, want about 300ms", took)
	}

	url2, _ := startOutbound(t, ca, static(mustCompile(t, &v1.RouteSpec{Rules: []v1.RouteRule{{Targets: []v1.RouteTarget{{Version: "v9", Weight: 1}}}}}), balance.Endpoint{Addr: in, Version: "v1"}))
	code, body, _ = get(t, url2+"/")
	if code != 503 || !strings.Contains(body, "no healthy endpoint of web version v9") {
		t.Fatalf("no endpoint of the version: %d %q, want 503 with a reason", code, body)
	}
}

// An endpoint that answers 5xx five times in a row is ejected: during its
// ejection it receives no request.
func TestOutlierEjection(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	good, bad := startApp(t, "good"), startApp(t, "bad")
	bad.serve = func(w http.ResponseWriter, r *http.Request) { http.Error(w, "broken", 500) }
	eps := []balance.Endpoint{
		{Addr: startInbound(t, ca, good, allowAll), Instance: "good"},
		{Addr: startInbound(t, ca, bad, allowAll), Instance: "bad"},
	}
	url, o := startOutbound(t, ca, static(mustCompile(t, nil), eps...))
	for bad.hits.Load() < balance.ConsecutiveErrors {
		get(t, url+"/")
	}
	before := bad.hits.Load()
	for range 100 {
		if code, body, _ := get(t, url+"/"); code != 200 || body != "good /" {
			t.Fatalf("during the ejection: %d %q", code, body)
		}
	}
	if n := bad.hits.Load() - before; n != 0 {
		t.Fatalf("the ejected endpoint received %d requests", n)
	}
	if v := testutil.ToFloat64(o.Metrics.Ejections.WithLabelValues("client", "web")); v != 1 {
		t.Fatalf("ejections metric = %v, want 1", v)
	}
}

// The circuit breaker: maxRequests run, maxPendingRequests wait, the rest
// get 503 at once; a waiting request runs when a slot frees.
func TestCircuitBreaker(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	release := make(chan struct{})
	a.serve = func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "done")
	}
	in := startInbound(t, ca, a, allowAll)
	url, o := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in}), func(o *Outbound) {
		o.Limits = func() *v1.ServiceLimits { return &v1.ServiceLimits{MaxRequests: 2, MaxPendingRequests: 1} }
	})

	codes := make(chan int, 3)
	for range 3 {
		go func() {
			code, _, _ := get(t, url+"/")
			codes <- code
		}()
	}
	eventually(t, 5*time.Second, "two requests at the app, one waiting", func() bool {
		o.limit.mu.Lock()
		defer o.limit.mu.Unlock()
		return a.hits.Load() == 2 && len(o.limit.waiters) == 1
	})
	code, body, _ := get(t, url+"/")
	if code != 503 || !strings.Contains(body, "circuit breaker") {
		t.Fatalf("a fourth request: %d %q, want 503 from the circuit breaker", code, body)
	}
	close(release)
	for range 3 {
		if c := <-codes; c != 200 {
			t.Fatalf("a request within the limits got %d", c)
		}
	}
	if v := testutil.ToFloat64(o.Metrics.Overflows.WithLabelValues("client", "web")); v != 1 {
		t.Fatalf("overflow metric %v, want 1", v)
	}
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	trellistest.Eventually(t, d, what, func() error {
		if cond() {
			return nil
		}
		return fmt.Errorf("not yet")
	})
}

// Each request leaves one JSON access log line on each side.
func TestAccessLog(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	in := startInbound(t, ca, a, allowAll)
	var buf syncBuffer
	url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in, Instance: "web-1", Version: "v1"}), func(o *Outbound) {
		o.Logger = slog.New(slog.NewJSONHandler(&buf, nil))
	})
	get(t, url+"/logged", "X-Request-Id: req-42")
	eventually(t, 2*time.Second, "access line", func() bool { return strings.Contains(buf.String(), `"msg":"access"`) })
	line := buf.String()
	for _, want := range []string{`"requestId":"req-42"`, `"path":"/logged"`, `"status":200`, `"endpointInstance":"web-1"`, `"version":"v1"`, `"route":"default"`} {
		if !strings.Contains(line, want) {
			t.Errorf("access log %s lacks %s", line, want)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// When the upstream fails every request, the retry budget keeps retries
// from multiplying the load: far fewer than attempts x requests arrive.
func TestRetryBudgetCapsLoad(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	a.serve = func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(2 * time.Millisecond)
		http.Error(w, "down", http.StatusServiceUnavailable)
	}
	in := startInbound(t, ca, a, allowAll)
	rt := mustCompile(t, &v1.RouteSpec{Rules: []v1.RouteRule{{Retries: &v1.RetryPolicy{Attempts: 5, On: []string{"gateway-error"}}}}})
	url, o := startOutbound(t, ca, static(rt, balance.Endpoint{Addr: in}))
	const workers, each = 40, 25
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{}
			for range each {
				resp, err := c.Get(url + "/")
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	requests := workers * each
	hits := a.hits.Load()
	t.Logf("%d requests made %d attempts at the app (without a budget: %d)", requests, hits, 5*requests)
	if hits > int64(requests)*3/2 {
		t.Fatalf("%d attempts for %d requests: retries multiplied the load", hits, requests)
	}
	if testutil.ToFloat64(o.Metrics.BudgetExhausted.WithLabelValues("client", "web")) == 0 {
		t.Fatal("the budget never refused a retry")
	}
}

// goneAwayConn returns a client connection, with one stream reserved, to
// a server that sent GOAWAY before taking any stream: what a pooled
// connection looks like when its peer retires it under a caller.
func goneAwayConn(t *testing.T, ca *trellistest.CA) *tunnel.Conn {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	scfg := ca.Source(t, "web").ServerConfig(nil, l4.ALPN)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, scfg)
				if tc.Handshake() != nil {
					c.Close()
					return
				}
				srv := tunnel.NewServer(tc, tunnel.Config{Requests: true}, func(s *tunnel.Stream) {
					t.Errorf("a server going away got a stream: %s %s", s.Method, s.Path)
				})
				srv.Shutdown()
				srv.Run()
			}()
		}
	}()
	ccfg := ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), l4.ALPN)
	for range 10 {
		tc, err := tls.Dial("tcp", l.Addr().String(), ccfg)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tunnel.NewClient(tc, tunnel.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if !c.Reserve() {
			continue // the GOAWAY came first
		}
		eventually(t, 5*time.Second, "GOAWAY received", func() bool { return !c.Usable() })
		return c
	}
	t.Fatal("no reservation before the GOAWAY in 10 tries")
	return nil
}

// A request whose stream the peer refused unseen (its connection was going
// away, as a retired connection does) is sent again on a fresh connection,
// body and all, even with no retry policy: retiring a connection fails no
// request.
func TestRefusedStreamIsSentAgain(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	a.serve = func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "got %s", b)
	}
	addr := startInbound(t, ca, a, allowAll)
	gone := goneAwayConn(t, ca)
	pool := l4.NewPool(0, 0, nil)
	t.Cleanup(pool.Close)
	cfg := ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), l4.ALPN)
	var calls atomic.Int32
	url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: addr, Instance: "web-1"}), func(o *Outbound) {
		o.Conn = func(ctx context.Context, ep balance.Endpoint) (*tunnel.Conn, error) {
			if calls.Add(1) == 1 {
				return gone, nil
			}
			return pool.Get(ctx, ep, "web", cfg)
		}
	})
	for _, tc := range []struct {
		name string
		body io.Reader
	}{
		{"known length", strings.NewReader("hello")},
		// A reader of unknown size makes the client send it chunked: the
		// outbound holds it ahead and must send it again, not an empty body.
		{"chunked", io.MultiReader(strings.NewReader("hel"), strings.NewReader("lo"))},
	} {
		calls.Store(0)
		hits := a.hits.Load()
		resp, err := http.Post(url+"/x", "text/plain", tc.body)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "got hello" {
			t.Fatalf("%s: POST after a refused stream = %d %q, want 200 %q", tc.name, resp.StatusCode, body, "got hello")
		}
		if n := a.hits.Load() - hits; n != 1 {
			t.Errorf("%s: app saw %d requests, want 1", tc.name, n)
		}
	}
}

// A response crosses both sidecars as fields: the app's fields arrive in
// its order, hop-by-hop ones and a forged denial marker do not, and the
// upstream time is the caller's proxy's own, in place of the app's.
func TestResponseFieldsRelayed(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	a.serve = func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["X-Multi"] = []string{"1", "2", "3"}
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Authenticate", "Basic")
		h.Set(DeniedHeader, "forged")
		h.Set(UpstreamTimeHeader, "999999")
		h.Set("Content-Type", "text/plain")
		io.WriteString(w, "ok")
	}
	in := startInbound(t, ca, a, allowAll)
	url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in, Instance: "web-1"}))
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	for _, c := range []*http.Client{{}, {Transport: &http.Transport{Protocols: &h2}}} {
		resp, err := c.Get(url + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		h := resp.Header
		if string(b) != "ok" || h.Get("Content-Type") != "text/plain" || !slices.Equal(h["X-Multi"], []string{"1", "2", "3"}) {
			t.Errorf("%s: body %q, header %v", resp.Proto, b, h)
		}
		for _, k := range []string{"Keep-Alive", "Proxy-Authenticate", DeniedHeader} {
			if v, ok := h[k]; ok {
				t.Errorf("%s: %s %v relayed", resp.Proto, k, v)
			}
		}
		if v := h.Values(UpstreamTimeHeader); len(v) != 1 || v[0] == "999999" {
			t.Errorf("%s: %s %v, want the proxy's one value", resp.Proto, UpstreamTimeHeader, v)
		}
	}
}
