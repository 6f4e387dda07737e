package trellistest

import (
	"context"
	"encoding/hex"
	"net"
	"strconv"
	"sync"
	"testing"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonv1 "go.opentelemetry.io/proto/otlp/common/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// OTLPReceiver is an OTLP/gRPC trace collector on loopback (the OTLP
// protobuf trace service) that keeps the spans it is sent.
type OTLPReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
	// Addr is host:port; the endpoint URL is "grpc://" + Addr.
	Addr string

	mu    sync.Mutex
	spans []ReceivedSpan
	hold  chan struct{} // when not nil, Export waits until it is closed
	calls int           // Export calls begun
}

// ReceivedSpan is a span with the attributes of its resource.
type ReceivedSpan struct {
	Resource map[string]string
	*tracev1.Span
}

// TraceID and SpanID and ParentID are the span's IDs in hex ("" for no
// parent).
func (s ReceivedSpan) TraceID() string  { return hex.EncodeToString(s.Span.TraceId) }
func (s ReceivedSpan) SpanID() string   { return hex.EncodeToString(s.Span.SpanId) }
func (s ReceivedSpan) ParentID() string { return hex.EncodeToString(s.Span.ParentSpanId) }

// Attr is the span attribute key as a string ("" when absent; an integer
// in decimal).
func (s ReceivedSpan) Attr(key string) (string, bool) {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return anyString(kv.Value), true
		}
	}
	return "", false
}

func anyString(v *commonv1.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonv1.AnyValue_StringValue:
		return x.StringValue
	case *commonv1.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonv1.AnyValue_BoolValue:
		if x.BoolValue {
			return "true"
		}
		return "false"
	}
	return v.String()
}

// StartOTLP serves an OTLPReceiver until the test ends.
func StartOTLP(t testing.TB) *OTLPReceiver {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &OTLPReceiver{Addr: l.Addr().String()}
	s := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(s, r)
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(l) }()
	t.Cleanup(func() {
		r.Release()
		s.Stop()
		<-done
	})
	return r
}

// Export keeps the spans of req.
func (r *OTLPReceiver) Export(ctx context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	r.calls++
	hold := r.hold
	r.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		res := map[string]string{}
		for _, kv := range rs.GetResource().GetAttributes() {
			res[kv.Key] = anyString(kv.Value)
		}
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				r.spans = append(r.spans, ReceivedSpan{Resource: res, Span: sp})
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// Spans returns the spans received so far.
func (r *OTLPReceiver) Spans() []ReceivedSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ReceivedSpan(nil), r.spans...)
}

// Calls is the number of exports begun (held ones included).
func (r *OTLPReceiver) Calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

// Hold makes exports wait until Release, as a collector that stalls.
func (r *OTLPReceiver) Hold() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hold == nil {
		r.hold = make(chan struct{})
	}
}

// Release lets held and later exports through.
func (r *OTLPReceiver) Release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hold != nil {
		close(r.hold)
		r.hold = nil
	}
}
