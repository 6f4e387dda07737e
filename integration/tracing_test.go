//go:build linux

package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// traceApps are hello-web and hello-backend as an app that traces should
// be: hello-web passes the request's trace context and request ID on to
// its call of hello-backend. Each records the traceparent it was given.
type traceApps struct {
	webPort, backendPort int
	mu                   sync.Mutex
	seen                 map[string]string // app -> last traceparent
}

func startTraceApps(t *testing.T, backendUpstream string) *traceApps {
	t.Helper()
	a := &traceApps{seen: map[string]string{}}
	serve := func(name string, h http.HandlerFunc) int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/health" {
				return
			}
			a.mu.Lock()
			a.seen[name] = r.Header.Get("Traceparent")
			a.mu.Unlock()
			h(w, r)
		})}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		return l.Addr().(*net.TCPAddr).Port
	}
	a.backendPort = serve("hello-backend", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"greeting":"Hello"}`)
	})
	client := &http.Client{Timeout: 5 * time.Second}
	a.webPort = serve("hello-web", func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, "http://"+backendUpstream+"/data", nil)
		for _, k := range []string{"Traceparent", "Tracestate", "X-Request-Id"} {
			if v := r.Header.Get(k); v != "" {
				req.Header.Set(k, v)
			}
		}
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		w.WriteHeader(resp.StatusCode)
		w.Write(b)
	})
	return a
}

// A three-hop trace through the hello example's shape, ingress ->
// hello-web -> hello-backend, reaches an OTLP collector correctly
// parented: the gateway's client span is the child of the caller's
// traceparent, hello-web's server span the child of that, and so on, each
// with its hop's attributes and its proxy's resource.
func TestTracingThreeHops(t *testing.T) {
	collector := trellistest.StartOTLP(t)
	otlp := []string{"--otlp-endpoint", "grpc://" + collector.Addr, "--trace-sampling", "1", "--version", "v1"}
	s := startServer(t)
	gwPort := trellistest.FreePort(t)
	applyYAML(t, s, fmt.Sprintf(`kind: Service
name: hello-web
spec: {protocol: http}
---
kind: Service
name: hello-backend
spec: {protocol: http}
---
kind: Gateway
name: hello-gateway
spec:
  listeners:
    - port: %d
      protocol: http
      routes: [{pathPrefix: /hello-service/, service: hello-web, rewritePrefix: /}]
`, gwPort))
	s.mustCLI(t, "intention", "allow", "hello-gateway", "hello-web")
	s.mustCLI(t, "intention", "allow", "hello-web", "hello-backend")

	backendUp, backendUpPort := loopAddr(t)
	apps := startTraceApps(t, backendUp)
	s.startProxy(t, proxyOpts{service: "hello-backend", appPort: apps.backendPort, extra: otlp})
	s.startProxy(t, proxyOpts{service: "hello-web", appPort: apps.webPort,
		upstreams: []string{"hello-backend:" + strconv.Itoa(backendUpPort)}, extra: otlp})
	start(t, "gateway", nil, append([]string{"gateway", "--name", "hello-gateway", "--listen-addr", "127.0.0.1",
		"--server", s.addr, "--ca-file", s.caFile, "--token-file", s.tokenFile(t, "hello-gateway"),
		"--admin-port", strconv.Itoa(trellistest.FreePort(t)), "--log-level", "debug"}, otlp[:4]...)...)
	s.waitInstances(t, 10*time.Second, "hello-backend registered", "hello-backend", 1)
	s.waitInstances(t, 10*time.Second, "hello-web registered", "hello-web", 1)

	url := fmt.Sprintf("http://127.0.0.1:%d/hello-service/hello/world", gwPort)
	get := func(traceparent string) error {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if traceparent != "" {
			req.Header.Set("Traceparent", traceparent)
		}
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(b), "Hello") {
			return fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		return nil
	}
	// Until the whole path serves (traces of their own, not the one
	// asserted below).
	trellistest.Eventually(t, 20*time.Second, "the path through the gateway serving", func() error { return get("") })

	const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	if err := get("00-" + trace + "-" + parent + "-01"); err != nil {
		t.Fatal(err)
	}
	var spans []trellistest.ReceivedSpan
	trellistest.Eventually(t, 20*time.Second, "the trace's four spans at the collector", func() error {
		spans = spans[:0]
		for _, sp := range collector.Spans() {
			if sp.TraceID() == trace {
				spans = append(spans, sp)
			}
		}
		if len(spans) < 4 {
			return fmt.Errorf("%d spans of the trace", len(spans))
		}
		return nil
	})
	if len(spans) != 4 {
		t.Fatalf("%d spans of the trace, want 4: %v", len(spans), spans)
	}
	// The hops in order: each span the parent of the next.
	hops := []struct {
		service string
		kind    tracev1.Span_SpanKind
		attrs   map[string]string
	}{
		{"hello-gateway", tracev1.Span_SPAN_KIND_CLIENT, map[string]string{"peer.service": "hello-web", "trellis.route": "default",
			"trellis.version": "v1", "http.request.method": "GET", "http.response.status_code": "200", "http.request.resend_count": "0"}},
		{"hello-web", tracev1.Span_SPAN_KIND_SERVER, map[string]string{"peer.service": "hello-gateway", "trellis.version": "v1",
			"http.request.method": "GET", "http.response.status_code": "200"}},
		{"hello-web", tracev1.Span_SPAN_KIND_CLIENT, map[string]string{"peer.service": "hello-backend", "trellis.route": "default",
			"trellis.version": "v1", "http.request.method": "GET", "http.response.status_code": "200", "http.request.resend_count": "0"}},
		{"hello-backend", tracev1.Span_SPAN_KIND_SERVER, map[string]string{"peer.service": "hello-web", "trellis.version": "v1",
			"http.request.method": "GET", "http.response.status_code": "200"}},
	}
	want := parent
	for i, hop := range hops {
		var found *trellistest.ReceivedSpan
		for j := range spans {
			if spans[j].ParentID() == want {
				found = &spans[j]
			}
		}
		if found == nil {
			t.Fatalf("hop %d (%s %s): no span whose parent is %s; spans: %v", i+1, hop.service, hop.kind, want, spans)
		}
		if got := found.Resource["service.name"]; got != hop.service || found.Kind != hop.kind {
			t.Errorf("hop %d: a %s span of %q, want a %s span of %q", i+1, found.Kind, got, hop.kind, hop.service)
		}
		for k, v := range hop.attrs {
			if got, ok := found.Attr(k); !ok || got != v {
				t.Errorf("hop %d (%s %s): %s = %q (present %v), want %q", i+1, hop.service, hop.kind, k, got, ok, v)
			}
		}
		want = found.SpanID()
	}
	// Each app was handed the traceparent of its proxy's server span.
	apps.mu.Lock()
	defer apps.mu.Unlock()
	for app, span := range map[string]string{"hello-web": spanOf(spans, "hello-web", tracev1.Span_SPAN_KIND_SERVER), "hello-backend": want} {
		if got := apps.seen[app]; got != "00-"+trace+"-"+span+"-01" {
			t.Errorf("%s saw traceparent %q, want its proxy's server span %s", app, got, span)
		}
	}
}

func spanOf(spans []trellistest.ReceivedSpan, service string, kind tracev1.Span_SpanKind) string {
	for _, s := range spans {
		if s.Resource["service.name"] == service && s.Kind == kind {
			return s.SpanID()
		}
	}
	return ""
}
