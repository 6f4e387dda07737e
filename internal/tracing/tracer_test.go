package tracing

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

const (
	incomingTrace  = "0af7651916cd43dd8448eb211c80319c"
	incomingParent = "b7ad6b7169203331"
)

func newTracer(t *testing.T, r *trellistest.OTLPReceiver, sampling float64, queue int) (*Tracer, *Metrics) {
	t.Helper()
	e, err := ParseEndpoint("grpc://"+r.Addr, "")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(nil)
	tr, err := New(Config{Endpoint: e, Sampling: sampling, QueueSize: queue, Service: "web", Version: "v2", Instance: "web-1"}, Options{Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Shutdown(context.Background()) })
	return tr, m
}

func flush(t *testing.T, tr *Tracer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
}

// A client span is the child of the request's traceparent, which then
// names it; a server span is the child of that; both carry the hop's
// attributes and the proxy's resource.
func TestSpansChainAndCarryAttributes(t *testing.T) {
	r := trellistest.StartOTLP(t)
	tr, _ := newTracer(t, r, 0, 0) // sampled only as the caller says
	h := http.Header{"Traceparent": {"00-" + incomingTrace + "-" + incomingParent + "-01"}, "Tracestate": {"vendor=x"}}
	client := tr.StartClient(h, "GET", "backend")
	tp := strings.Split(h.Get("Traceparent"), "-")
	if len(tp) != 4 || tp[1] != incomingTrace || tp[2] == incomingParent || tp[3] != "01" {
		t.Fatalf("traceparent after the client span %q: want trace %s, a new span, flags 01", h.Get("Traceparent"), incomingTrace)
	}
	if got := h.Get("Tracestate"); got != "vendor=x" {
		t.Errorf("tracestate %q, want the caller's kept", got)
	}
	server := tr.StartServer(h, "GET", "web", "backend")
	server.Inject(h)
	server.End("", "", 503, 0)
	client.End("canary", "v1", 503, 3)
	client.End("other", "v9", 200, 1) // the first End counts
	flush(t, tr)

	spans := r.Spans()
	if len(spans) != 2 {
		t.Fatalf("%d spans received, want 2", len(spans))
	}
	var c, s trellistest.ReceivedSpan
	for _, sp := range spans {
		switch sp.Kind {
		case tracev1.Span_SPAN_KIND_CLIENT:
			c = sp
		case tracev1.Span_SPAN_KIND_SERVER:
			s = sp
		}
	}
	if c.Span == nil || s.Span == nil {
		t.Fatalf("spans %v: want one client and one server span", spans)
	}
	if c.TraceID() != incomingTrace || c.ParentID() != incomingParent || c.SpanID() != tp[2] {
		t.Errorf("client span trace %s parent %s id %s; want %s, %s, and the traceparent's %s", c.TraceID(), c.ParentID(), c.SpanID(), incomingTrace, incomingParent, tp[2])
	}
	if s.TraceID() != incomingTrace || s.ParentID() != c.SpanID() {
		t.Errorf("server span trace %s parent %s; want %s, the client span %s", s.TraceID(), s.ParentID(), incomingTrace, c.SpanID())
	}
	if got := strings.Split(h.Get("Traceparent"), "-")[2]; got != s.SpanID() {
		t.Errorf("traceparent for the app names %s, want the server span %s", got, s.SpanID())
	}
	for _, tc := range []struct {
		span       trellistest.ReceivedSpan
		key, value string
	}{
		{c, AttrPeerService, "backend"}, {c, AttrRoute, "canary"}, {c, AttrVersion, "v1"}, {c, AttrMethod, "GET"},
		{c, AttrStatus, "503"}, {c, AttrResends, "2"},
		{s, AttrPeerService, "web"}, {s, AttrVersion, "v2"}, {s, AttrMethod, "GET"}, {s, AttrStatus, "503"},
	} {
		if got, ok := tc.span.Attr(tc.key); !ok || got != tc.value {
			t.Errorf("%s span attribute %s = %q (present %v), want %q", tc.span.Kind, tc.key, got, ok, tc.value)
		}
	}
	for k, want := range map[string]string{"service.name": "web", "service.version": "v2", "service.instance.id": "web-1"} {
		if got := c.Resource[k]; got != want {
			t.Errorf("resource %s = %q, want %q", k, got, want)
		}
	}
	if c.Status.GetCode() != tracev1.Status_STATUS_CODE_ERROR || s.Status.GetCode() != tracev1.Status_STATUS_CODE_ERROR {
		t.Errorf("status of a 503: client %v, server %v; want errors", c.Status, s.Status)
	}
}

// Sampling: a caller's decision is followed both ways; a trace started
// here is recorded at the configured ratio. An unsampled span still
// gets an ID of its own in the traceparent.
func TestSampling(t *testing.T) {
	for _, tc := range []struct {
		name        string
		sampling    float64
		traceparent string
		recorded    bool
	}{
		{"caller sampled, ratio 0", 0, "00-" + incomingTrace + "-" + incomingParent + "-01", true},
		{"caller not sampled, ratio 1", 1, "00-" + incomingTrace + "-" + incomingParent + "-00", false},
		{"new trace, ratio 0", 0, "", false},
		{"new trace, ratio 1", 1, "", true},
		{"invalid traceparent, ratio 1", 1, "00-" + strings.Repeat("0", 32) + "-" + incomingParent + "-01", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := trellistest.StartOTLP(t)
			tr, _ := newTracer(t, r, tc.sampling, 0)
			h := http.Header{}
			if tc.traceparent != "" {
				h.Set("Traceparent", tc.traceparent)
			}
			sp := tr.StartClient(h, "GET", "backend")
			sp.End("default", "v1", 200, 1)
			flush(t, tr)
			if got := len(r.Spans()); got != map[bool]int{true: 1, false: 0}[tc.recorded] {
				t.Errorf("%d spans exported, want recorded=%v", got, tc.recorded)
			}
			tp := strings.Split(h.Get("Traceparent"), "-")
			if len(tp) != 4 || len(tp[1]) != 32 || tp[2] == incomingParent || tp[3] != map[bool]string{true: "01", false: "00"}[tc.recorded] {
				t.Errorf("traceparent %q: want a new span with sampled=%v", h.Get("Traceparent"), tc.recorded)
			}
		})
	}
}

// While the collector stalls, ending spans never waits: past what the
// queue and the batch processor hold, spans are dropped and counted, and
// every span ended is either exported once the collector answers or
// counted as dropped.
func TestFullQueueDropsAndCounts(t *testing.T) {
	r := trellistest.StartOTLP(t)
	r.Hold()
	const queue, n = 16, 3000
	tr, m := newTracer(t, r, 1, queue)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for range n {
			tr.StartClient(http.Header{}, "GET", "backend").End("default", "v1", 200, 1)
		}
	}()
	select {
	case <-ended:
	case <-time.After(20 * time.Second):
		t.Fatal("ending spans blocked while the collector stalled")
	}
	dropped := testutil.ToFloat64(m.Dropped.WithLabelValues(DropQueueFull))
	// Held at most: the queue and one batch in the stalled export.
	if most := float64(queue + batchSize); dropped < n-most {
		t.Errorf("%v spans dropped, want at least %v: more were held than the bounds allow", dropped, n-most)
	}
	r.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := float64(len(r.Spans())); got+dropped != n {
		t.Errorf("%v spans exported and %v dropped, want %d in all", got, dropped, n)
	}
	if f := testutil.ToFloat64(m.Dropped.WithLabelValues(DropExportFailed)); f != 0 {
		t.Errorf("%v spans counted as failed exports, want 0", f)
	}
}
