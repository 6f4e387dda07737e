package tracing

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/credentials"
)

// Attributes of the proxies' spans (besides the resource's service.name,
// service.version and service.instance.id: the proxy's own).
const (
	// AttrPeerService is the other side's service: the upstream on a
	// client span, the caller on a server span (absent for a caller
	// without a mesh identity).
	AttrPeerService = "peer.service"
	// AttrRoute is the name of the Route rule that matched (client spans).
	AttrRoute = "trellis.route"
	// AttrVersion is the version of the instance that answered (client
	// spans) or of this instance (server spans).
	AttrVersion = "trellis.version"
	// AttrMethod and AttrStatus are the request's method and the status
	// code of its answer (the proxy's own, such as 503 or 504, when no
	// upstream answered).
	AttrMethod = "http.request.method"
	AttrStatus = "http.response.status_code"
	// AttrResends is the number of retries the client span's request
	// took: its attempts less one.
	AttrResends = "http.request.resend_count"
)

// Export timing: a batch leaves at least every batchTimeout; one export,
// its retries included, is given up after exportTimeout (its spans are
// then dropped and counted).
const (
	batchTimeout  = time.Second
	batchSize     = 512
	exportTimeout = 10 * time.Second
)

// Tracer starts the spans of one proxy and exports them. Its methods are
// safe for concurrent use; a nil *Tracer starts nothing.
type Tracer struct {
	tp      *sdktrace.TracerProvider
	tracer  trace.Tracer
	version string
	prop    propagation.TraceContext
}

// Options are what New needs besides Config.
type Options struct {
	// Metrics; nil means unregistered ones.
	Metrics *Metrics
	// Logger; nil discards.
	Logger *slog.Logger
}

// New makes a tracer exporting to cfg.Endpoint. It does no I/O: the
// exporter connects when it first has spans to send. Shutdown ends its
// goroutines.
func New(cfg Config, o Options) (*Tracer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	exp, err := newExporter(cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("otlp exporter for %s: %w", cfg.Endpoint, err)
	}
	wrapped := &exporter{SpanExporter: exp, dropped: o.Metrics.Dropped.WithLabelValues(DropExportFailed), log: o.Logger}
	bsp := sdktrace.NewBatchSpanProcessor(wrapped,
		sdktrace.WithBatchTimeout(batchTimeout), sdktrace.WithMaxExportBatchSize(batchSize),
		sdktrace.WithMaxQueueSize(batchSize), sdktrace.WithExportTimeout(exportTimeout),
		sdktrace.WithBlocking()) // the queue in front of it drops instead
	q := newQueue(cfg.QueueSize, bsp, o.Metrics.Dropped.WithLabelValues(DropQueueFull))
	attrs := []attribute.KeyValue{attribute.String("service.name", cfg.Service)}
	if cfg.Version != "" {
		attrs = append(attrs, attribute.String("service.version", cfg.Version))
	}
	if cfg.Instance != "" {
		attrs = append(attrs, attribute.String("service.instance.id", cfg.Instance))
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(resource.NewSchemaless(attrs...)),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.Sampling))),
		sdktrace.WithSpanProcessor(q),
	)
	return &Tracer{tp: tp, tracer: tp.Tracer("github.com/trellis-mesh/trellis/internal/tracing"), version: cfg.Version}, nil
}

func newExporter(e Endpoint) (sdktrace.SpanExporter, error) {
	ctx := context.Background() // New does no I/O with it
	if e.Protocol == ProtocolGRPC {
		opts := []otlptracegrpc.Option{
			otlptracegrpc.WithEndpoint(e.Host), otlptracegrpc.WithTimeout(exportTimeout),
			otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: true, InitialInterval: 500 * time.Millisecond, MaxInterval: 2 * time.Second, MaxElapsedTime: exportTimeout}),
		}
		if e.TLS {
			opts = append(opts, otlptracegrpc.WithTLSCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})))
		} else {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		return otlptracegrpc.New(ctx, opts...)
	}
	opts := []otlptracehttp.Option{
		otlptracehttp.WithEndpoint(e.Host), otlptracehttp.WithURLPath(e.Path), otlptracehttp.WithTimeout(exportTimeout),
		otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: true, InitialInterval: 500 * time.Millisecond, MaxInterval: 2 * time.Second, MaxElapsedTime: exportTimeout}),
	}
	if e.TLS {
		opts = append(opts, otlptracehttp.WithTLSClientConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	} else {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	return otlptracehttp.New(ctx, opts...)
}

// Shutdown exports the spans still queued, until ctx ends, and stops the
// exporter.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.tp.Shutdown(ctx)
}

// ForceFlush exports every span ended so far, until ctx ends.
func (t *Tracer) ForceFlush(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.tp.ForceFlush(ctx)
}

// Span is one hop's span. Its methods do nothing on a nil *Span; End may
// be called more than once, the first call counts.
type Span struct {
	s      trace.Span
	client bool
}

// parent is the span context h's traceparent (and tracestate) names, or
// none when it is absent or invalid.
func (t *Tracer) parent(h http.Header) context.Context {
	return t.prop.Extract(context.Background(), propagation.HeaderCarrier(h))
}

// StartClient starts the client span of a request a proxy sends on to
// the service peer, as the child of the span h's traceparent names (a
// new trace without one), and makes h's traceparent name the new span.
func (t *Tracer) StartClient(h http.Header, method, peer string) *Span {
	_, s := t.tracer.Start(t.parent(h), method+" "+peer, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String(AttrMethod, method), attribute.String(AttrPeerService, peer)))
	sp := &Span{s: s, client: true}
	sp.Inject(h)
	return sp
}

// StartServer starts the server span of a request a proxy received from
// the service peer ("" for a caller without a mesh identity) for its
// app, service, as the child of the span h's traceparent names. Inject
// then hands the app the new span's traceparent.
func (t *Tracer) StartServer(h http.Header, method, peer, service string) *Span {
	attrs := make([]attribute.KeyValue, 0, 3)
	attrs = append(attrs, attribute.String(AttrMethod, method))
	if peer != "" {
		attrs = append(attrs, attribute.String(AttrPeerService, peer))
	}
	if t.version != "" {
		attrs = append(attrs, attribute.String(AttrVersion, t.version))
	}
	_, s := t.tracer.Start(t.parent(h), method+" "+service, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
	return &Span{s: s}
}

// Inject sets h's traceparent to the span's, and its tracestate to the
// one the span carries on (none when the request's was not valid).
func (s *Span) Inject(h http.Header) {
	if s == nil {
		return
	}
	delete(h, "Tracestate")
	var p propagation.TraceContext
	p.Inject(trace.ContextWithSpan(context.Background(), s.s), propagation.HeaderCarrier(h))
}

// End ends the span with what the hop came to: the route and the
// version that answered (client spans; "" when none), the status code,
// and how many attempts it took (client spans).
func (s *Span) End(route, version string, status, attempts int) {
	if s == nil {
		return
	}
	s.end(route, version, status, attempts)
}

func (s *Span) end(route, version string, status, attempts int) {
	if !s.s.IsRecording() {
		s.s.End()
		return
	}
	attrs := make([]attribute.KeyValue, 0, 4)
	attrs = append(attrs, attribute.Int(AttrStatus, status))
	if s.client {
		attrs = append(attrs, attribute.String(AttrRoute, route), attribute.Int(AttrResends, max(attempts-1, 0)))
		if version != "" {
			attrs = append(attrs, attribute.String(AttrVersion, version))
		}
	}
	s.s.SetAttributes(attrs...)
	// As the HTTP conventions have it: a client sees 4xx as its request
	// failing, a server only 5xx as its own failure.
	if status >= 500 || s.client && status >= 400 {
		s.s.SetStatus(codes.Error, strings.TrimSpace(http.StatusText(status)))
	}
	s.s.End()
}
