package tracing

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/trellis-mesh/trellis/internal/ratelog"
)

// Metrics are the tracer's Prometheus metrics.
type Metrics struct {
	// Dropped counts sampled spans that were never exported, by reason:
	// queue_full (the queue was full when the span ended) or
	// export_failed (the collector refused them or could not be reached).
	Dropped *prometheus.CounterVec
}

// Reasons of Metrics.Dropped.
const (
	DropQueueFull    = "queue_full"
	DropExportFailed = "export_failed"
)

// NewMetrics makes the metrics and registers them with reg (nil: none).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_trace_spans_dropped_total",
			Help: "Sampled spans not exported, by reason (queue_full: the export queue was full; export_failed: the collector refused them or was unreachable).",
		}, []string{"reason"}),
	}
	for _, r := range []string{DropQueueFull, DropExportFailed} {
		m.Dropped.WithLabelValues(r) // both series from the start
	}
	if reg != nil {
		reg.MustRegister(m.Dropped)
	}
	return m
}

// queue is the span processor the tracer's spans end in: a bounded
// channel that OnEnd never waits on (a full channel drops the span and
// counts it), and one goroutine, owned by the queue from newQueue to
// Shutdown, that moves spans from it into the SDK's batch span processor.
// That processor batches and exports; it is made to block when its own
// queue is full, so that it drops nothing uncounted: while an export is
// slow, it is this goroutine that waits, and this channel that fills.
type queue struct {
	ch      chan sdktrace.ReadOnlySpan
	next    sdktrace.SpanProcessor
	dropped prometheus.Counter
	closed  atomic.Bool // set by Shutdown: OnEnd takes nothing more
	cancel  context.CancelFunc
	done    chan struct{} // closed when the goroutine has returned
	stop    sync.Once
}

var _ sdktrace.SpanProcessor = (*queue)(nil)

func newQueue(size int, next sdktrace.SpanProcessor, dropped prometheus.Counter) *queue {
	ctx, cancel := context.WithCancel(context.Background())
	q := &queue{ch: make(chan sdktrace.ReadOnlySpan, size), next: next, dropped: dropped, cancel: cancel, done: make(chan struct{})}
	go q.run(ctx)
	return q
}

func (q *queue) run(ctx context.Context) {
	defer close(q.done)
	for {
		select {
		case s := <-q.ch:
			q.pass(s) // may wait for room in the batch processor
		case <-ctx.Done():
			return
		}
	}
}

// flushMarker goes through the queue for ForceFlush: when the goroutine
// gets to it, every span queued before it is in the batch processor.
type flushMarker struct {
	sdktrace.ReadOnlySpan // nil: never read
	passed                chan struct{}
}

func (q *queue) pass(s sdktrace.ReadOnlySpan) {
	if m, ok := s.(flushMarker); ok {
		close(m.passed)
		return
	}
	q.next.OnEnd(s)
}

func (q *queue) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

// OnEnd queues a sampled span, or drops and counts it when the queue is
// full; it never blocks.
func (q *queue) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() || q.closed.Load() {
		return
	}
	select {
	case q.ch <- s:
	default:
		q.dropped.Inc()
	}
}

// drain moves what is queued now into the batch processor, once the
// goroutine has returned.
func (q *queue) drain() {
	for {
		select {
		case s := <-q.ch:
			q.pass(s)
		default:
			return
		}
	}
}

// ForceFlush exports every span ended before it was called, until ctx
// ends. It waits for room in the queue for its marker, and for the
// goroutine to pass the marker: then the spans before it, including one
// the goroutine held, are the batch processor's to flush.
func (q *queue) ForceFlush(ctx context.Context) error {
	m := flushMarker{passed: make(chan struct{})}
	select {
	case q.ch <- m:
	case <-q.done:
		return nil // shut down: Shutdown exported the rest
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-m.passed:
	case <-q.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	return q.next.ForceFlush(ctx)
}

// Shutdown stops the goroutine, exports what is queued (until ctx ends)
// and shuts the exporter down.
func (q *queue) Shutdown(ctx context.Context) error {
	var err error
	q.stop.Do(func() {
		q.closed.Store(true)
		q.cancel()
		<-q.done
		q.drain()
		err = q.next.Shutdown(ctx)
	})
	return err
}

// exporter counts the spans of a failed export and logs why (at most
// once a second), and reports success to the batch processor: it has
// nothing better to do with the error than hand it to the OpenTelemetry
// global error handler, which would write it to stderr unbounded.
type exporter struct {
	sdktrace.SpanExporter
	dropped prometheus.Counter
	log     *slog.Logger
	limit   ratelog.Limit
}

func (e *exporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	if err == nil {
		return nil
	}
	e.dropped.Add(float64(len(spans)))
	if n, ok := e.limit.Take(time.Now(), 1); ok {
		attrs := []any{"spans", len(spans), "err", err}
		if n > 0 {
			attrs = append(attrs, "suppressed", n)
		}
		e.log.Warn("span export failed", attrs...)
	}
	return nil
}
