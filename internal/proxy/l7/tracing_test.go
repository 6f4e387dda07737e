package l7

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/tracing"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

func startTracer(t testing.TB, r *trellistest.OTLPReceiver, service, version string, sampling float64) *tracing.Tracer {
	t.Helper()
	e, err := tracing.ParseEndpoint("grpc://"+r.Addr, "")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := tracing.New(tracing.Config{Endpoint: e, Service: service, Version: version, Sampling: sampling}, tracing.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Shutdown(context.Background()) })
	return tr
}

// startTracedInbound is startInbound with a tracer.
func startTracedInbound(t testing.TB, ca *trellistest.CA, a *app, tr *tracing.Tracer) string {
	src := ca.Source(t, "web")
	self, _ := identity.New("trellis.local", "web")
	in := &Inbound{Self: func() identity.ID { return self }, Authorize: allowAll, Target: a.addr,
		Protocol: func() string { return v1.ProtocolHTTP }, Tracer: tr}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := src.ServerConfig(nil, l4.ALPN)
	return trellistest.Serve(t, l, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		if tc.Handshake() != nil {
			return
		}
		peer, _ := certs.PeerID(tc.ConnectionState())
		in.ServeConn(tc, peer)
	})
}

// With tracers on both sides: the outbound's client span is the child of
// the caller's traceparent and carries the route, the version that
// answered, the status and the retry; each attempt's server span is its
// child; the app gets the traceparent of the server span of the attempt
// that reached it.
func TestTracingSpansPerHop(t *testing.T) {
	r := trellistest.StartOTLP(t)
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	var n atomic.Int64
	a.serve = func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			http.Error(w, "boom", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	}
	webTracer := startTracer(t, r, "web", "v2", 0)
	in := startTracedInbound(t, ca, a, webTracer)
	rt := mustCompile(t, &v1.RouteSpec{Rules: []v1.RouteRule{{Name: "retrying", Retries: &v1.RetryPolicy{Attempts: 2, On: []string{"5xx"}}}}})
	clientTracer := startTracer(t, r, "client", "", 0)
	url, _ := startOutbound(t, ca, static(rt, balance.Endpoint{Addr: in, Instance: "web-1", Version: "v2"}),
		func(o *Outbound) { o.Tracer = clientTracer })

	const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	if code, body, _ := get(t, url+"/x", "Traceparent: 00-"+trace+"-"+parent+"-01"); code != 200 || body != "ok" {
		t.Fatalf("got %d %q, want 200 ok after a retry", code, body)
	}
	var spans []trellistest.ReceivedSpan
	trellistest.Eventually(t, 10*time.Second, "three spans exported", func() error {
		for _, tr := range []*tracing.Tracer{clientTracer, webTracer} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			tr.ForceFlush(ctx)
			cancel()
		}
		if spans = r.Spans(); len(spans) != 3 {
			return fmt.Errorf("%d spans", len(spans))
		}
		return nil
	})
	var client trellistest.ReceivedSpan
	var servers []trellistest.ReceivedSpan
	for _, s := range spans {
		if s.Kind == tracev1.Span_SPAN_KIND_CLIENT {
			client = s
		} else {
			servers = append(servers, s)
		}
	}
	if client.Span == nil || len(servers) != 2 {
		t.Fatalf("want one client span and two server spans, got %v", spans)
	}
	if client.TraceID() != trace || client.ParentID() != parent || client.Resource["service.name"] != "client" {
		t.Errorf("client span in trace %s, parent %s, of %q; want %s, %s, client", client.TraceID(), client.ParentID(), client.Resource["service.name"], trace, parent)
	}
	for k, want := range map[string]string{tracing.AttrPeerService: "web", tracing.AttrRoute: "retrying", tracing.AttrVersion: "v2",
		tracing.AttrStatus: "200", tracing.AttrResends: "1", tracing.AttrMethod: "GET"} {
		if got, _ := client.Attr(k); got != want {
			t.Errorf("client span %s = %q, want %q", k, got, want)
		}
	}
	statuses := map[string]string{}
	for _, s := range servers {
		if s.TraceID() != trace || s.ParentID() != client.SpanID() || s.Resource["service.name"] != "web" {
			t.Errorf("server span in trace %s, parent %s, of %q; want %s, the client span %s, web", s.TraceID(), s.ParentID(), s.Resource["service.name"], trace, client.SpanID())
		}
		if got, _ := s.Attr(tracing.AttrPeerService); got != "client" {
			t.Errorf("server span peer.service %q, want client", got)
		}
		st, _ := s.Attr(tracing.AttrStatus)
		statuses[st] = s.SpanID()
	}
	if statuses["503"] == "" || statuses["200"] == "" {
		t.Fatalf("server span statuses %v, want a 503 and a 200", statuses)
	}
	a.mu.Lock()
	tp := strings.Split(a.last.Get("Traceparent"), "-")
	a.mu.Unlock()
	if len(tp) != 4 || tp[1] != trace || tp[2] != statuses["200"] {
		t.Errorf("app saw traceparent %v, want trace %s, span %s (the server span of the answered attempt)", tp, trace, statuses["200"])
	}
}

// BenchmarkRequestTraced is BenchmarkRequest with tracers on both
// sidecars, recording every trace (sampled) or none (unsampled: the cost
// of the spans' IDs and propagation alone).
func BenchmarkRequestTraced(b *testing.B) {
	for _, bc := range []struct {
		name     string
		sampling float64
	}{{"sampled", 1}, {"unsampled", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			r := trellistest.StartOTLP(b)
			ca := trellistest.NewCA(b, "trellis.local")
			a := startApp(b, "web")
			in := startTracedInbound(b, ca, a, startTracer(b, r, "web", "v1", bc.sampling))
			tr := startTracer(b, r, "client", "", bc.sampling)
			url, _ := startOutbound(b, ca, static(mustCompile(b, nil), balance.Endpoint{Addr: in}), func(o *Outbound) { o.Tracer = tr })
			c := &http.Client{}
			b.ReportAllocs()
			for b.Loop() {
				resp, err := c.Get(url + "/")
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}
