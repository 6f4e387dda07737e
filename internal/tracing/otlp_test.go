package tracing

import (
	"strings"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// The hand-written encoder against the official message types: every
// field it writes reads back as what it means, long values included
// (lengths past one varint byte).
func TestEncodeRequestDecodes(t *testing.T) {
	sc, err := parseTraceparent("00-" + incomingTrace + "-" + incomingParent + "-01")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Unix(1700000000, 123)
	long := strings.Repeat("x", 300)
	s := &span{sc: spanContext{traceID: sc.traceID, spanID: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, sampled: true},
		parent: sc.spanID, remoteParent: true, tracestate: "vendor=x", name: "GET " + long, kind: kindServer,
		start: start, end: start.Add(time.Millisecond), errorMsg: "Bad Gateway",
		attrs: []attr{{key: AttrStatus, i: 502, isInt: true}, {key: AttrPeerService, s: long}}}
	root := &span{sc: spanContext{traceID: sc.traceID, spanID: [8]byte{9}, sampled: true}, name: "root", kind: kindClient, start: start, end: start}
	b := encodeRequest([]attr{{key: "service.name", s: "web"}}, []*span{s, root})
	var req collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		t.Fatal(err)
	}
	rs := req.GetResourceSpans()
	if len(rs) != 1 || len(rs[0].GetScopeSpans()) != 1 || len(rs[0].ScopeSpans[0].GetSpans()) != 2 {
		t.Fatalf("decoded %v: want one resource, one scope, two spans", &req)
	}
	if kv := rs[0].GetResource().GetAttributes(); len(kv) != 1 || kv[0].Key != "service.name" || kv[0].Value.GetStringValue() != "web" {
		t.Errorf("resource attributes %v", kv)
	}
	if got := rs[0].ScopeSpans[0].GetScope().GetName(); got != scopeName {
		t.Errorf("scope %q, want %q", got, scopeName)
	}
	got, r := rs[0].ScopeSpans[0].Spans[0], rs[0].ScopeSpans[0].Spans[1]
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"trace id", string(got.TraceId), string(sc.traceID[:])},
		{"parent", string(got.ParentSpanId), string(sc.spanID[:])},
		{"span id", string(got.SpanId), string(s.sc.spanID[:])},
		{"tracestate", got.TraceState, "vendor=x"},
		{"name", got.Name, "GET " + long},
		{"kind", got.Kind, tracev1.Span_SPAN_KIND_SERVER},
		{"start", got.StartTimeUnixNano, uint64(start.UnixNano())},
		{"end", got.EndTimeUnixNano, uint64(start.Add(time.Millisecond).UnixNano())},
		{"status", got.GetStatus().GetCode(), tracev1.Status_STATUS_CODE_ERROR},
		{"status message", got.GetStatus().GetMessage(), "Bad Gateway"},
		{"flags", got.Flags, uint32(0x301)},
		{"int attribute", got.Attributes[0].GetValue().GetIntValue(), int64(502)},
		{"string attribute", got.Attributes[1].GetValue().GetStringValue(), long},
		{"root's parent", len(r.ParentSpanId), 0},
		{"root's flags", r.Flags, uint32(0x01)},
		{"root's status", r.GetStatus().GetCode(), tracev1.Status_STATUS_CODE_UNSET},
		{"root's kind", r.Kind, tracev1.Span_SPAN_KIND_CLIENT},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
}
