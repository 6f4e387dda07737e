package tracing

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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

// queue holds ended spans for the exporter: a bounded channel that add
// never waits on (a full channel drops the span and counts it), and one
// goroutine, owned by the queue from newQueue to shutdown, that takes
// spans from it in batches of up to batchSize and exports each batch
// when it is full or batchTimeout old. While an export is slow, it is
// this goroutine that waits, and the channel that fills.
type queue struct {
	ch       chan *span
	flushes  chan chan struct{}
	send     sender
	resource []attr
	dropped  prometheus.Counter // queue_full
	failed   prometheus.Counter // export_failed
	log      *slog.Logger
	limit    ratelog.Limit

	closed atomic.Bool // set by shutdown: add takes nothing more
	stop   chan context.Context
	done   chan struct{} // closed when the goroutine has returned
	once   sync.Once
}

func newQueue(size int, s sender, resource []attr, m *Metrics, log *slog.Logger) *queue {
	q := &queue{
		ch: make(chan *span, size), flushes: make(chan chan struct{}), send: s, resource: resource,
		dropped: m.Dropped.WithLabelValues(DropQueueFull), failed: m.Dropped.WithLabelValues(DropExportFailed),
		log: log, stop: make(chan context.Context, 1), done: make(chan struct{}),
	}
	go q.run()
	return q
}

// add queues an ended sampled span, or drops and counts it when the
// queue is full; it never blocks.
func (q *queue) add(s *span) {
	if q.closed.Load() {
		return
	}
	select {
	case q.ch <- s:
	default:
		q.dropped.Inc()
	}
}

func (q *queue) run() {
	defer close(q.done)
	batch := make([]*span, 0, batchSize)
	tick := time.NewTicker(batchTimeout)
	defer tick.Stop()
	ctx := context.Background()
	for {
		select {
		case s := <-q.ch:
			if batch = append(batch, s); len(batch) == batchSize {
				batch = q.export(ctx, batch)
			}
		case <-tick.C:
			batch = q.export(ctx, batch)
		case f := <-q.flushes:
			// Everything queued before the flush was asked for.
			for n := len(q.ch); n > 0; n-- {
				if batch = append(batch, <-q.ch); len(batch) == batchSize {
					batch = q.export(ctx, batch)
				}
			}
			batch = q.export(ctx, batch)
			close(f)
		case sctx := <-q.stop:
			for {
				select {
				case s := <-q.ch:
					if batch = append(batch, s); len(batch) == batchSize {
						batch = q.export(sctx, batch)
					}
					continue
				default:
				}
				break
			}
			q.export(sctx, batch)
			return
		}
	}
}

// export sends batch, counting its spans as export_failed when that
// fails, and returns it emptied.
func (q *queue) export(ctx context.Context, batch []*span) []*span {
	if len(batch) == 0 {
		return batch
	}
	err := ctx.Err()
	if err == nil {
		err = sendRetrying(ctx, q.send, encodeRequest(q.resource, batch))
	}
	if err != nil {
		q.failed.Add(float64(len(batch)))
		if n, ok := q.limit.Take(time.Now(), 1); ok {
			attrs := []any{"spans", len(batch), "err", err}
			if n > 0 {
				attrs = append(attrs, "suppressed", n)
			}
			q.log.Warn("span export failed", attrs...)
		}
	}
	clear(batch)
	return batch[:0]
}

// flush exports every span queued before it was called, until ctx ends.
func (q *queue) flush(ctx context.Context) error {
	f := make(chan struct{})
	select {
	case q.flushes <- f:
	case <-q.done:
		return nil // shut down: shutdown exported the rest
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-f:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// shutdown exports what is queued, until ctx ends, stops the goroutine
// and closes the connection to the collector.
func (q *queue) shutdown(ctx context.Context) error {
	var err error
	q.once.Do(func() {
		q.closed.Store(true)
		q.stop <- ctx
		select {
		case <-q.done:
		case <-ctx.Done():
			err = ctx.Err()
			<-q.done // its export ends with ctx
		}
		if cerr := q.send.close(); err == nil {
			err = cerr
		}
	})
	return err
}
