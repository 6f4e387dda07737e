package l7

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/ratelog"
)

// Metrics are the L7 proxy's Prometheus metrics, in the mesh's one naming
// scheme.
type Metrics struct {
	refusals ratelog.Limit // of the "request refused" lines
	denials  ratelog.Limit // of the "call denied by the destination" lines

	// DroppedFields counts request header fields a proxy removed before
	// passing a request on, by direction and reason ("underscore": a
	// name with '_', see DropUnderscoreFields).
	DroppedFields *prometheus.CounterVec

	Requests        *prometheus.CounterVec
	Duration        *prometheus.HistogramVec
	Retries         *prometheus.CounterVec
	BudgetExhausted *prometheus.CounterVec
	Ejections       *prometheus.CounterVec
	Overflows       *prometheus.CounterVec
	// Refused counts requests refused before reaching an upstream or the
	// app, by direction, source, destination and reason: a malformed
	// request (bad_method, bad_host, bad_target, bad_path, too_large,
	// connect, bad_request) or an authorization decision (no_intention,
	// intention, permission, no_permission, ...).
	Refused *prometheus.CounterVec
	// Rejected counts requests Server's HTTP/1.1 reader refused, by
	// reason (framing, line_ending, obs_fold, misdirected, ...).
	Rejected *prometheus.CounterVec

	// series holds Requests' and Duration's children by their labels, so
	// that a request finds them with one lookup: WithLabelValues checks
	// and hashes every label value, byte by byte, under a lock, for each
	// vector on every request. It grows with the label sets the vectors
	// hold, which are never deleted. (A map, not a sync.Map: a key of
	// that size would be allocated on every lookup as an interface.)
	seriesMu sync.RWMutex
	series   map[seriesKey]*series
}

type seriesKey struct {
	direction, source, destination, route, version string
	code                                           int
}

type series struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

// NewMetrics makes the metrics and registers them with reg (nil: none).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	labels := []string{"direction", "source", "destination", "route", "version", "code"}
	m := &Metrics{
		DroppedFields: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_request_fields_dropped_total", Help: "Request header fields removed before the request was passed on, by reason.",
		}, []string{"direction", "reason"}),
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_requests_total", Help: "HTTP requests proxied.",
		}, labels),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "trellis_request_duration_seconds", Help: "Time from request to the end of the response body.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, labels),
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_request_retries_total", Help: "Retried attempts.",
		}, []string{"source", "destination", "route"}),
		BudgetExhausted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_retry_budget_exhausted_total", Help: "Retries not made because the retry budget was spent.",
		}, []string{"source", "destination"}),
		Ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_endpoint_ejections_total", Help: "Endpoints ejected after consecutive failed requests.",
		}, []string{"source", "destination"}),
		Overflows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_circuit_breaker_overflows_total", Help: "Requests refused by a circuit breaker.",
		}, []string{"source", "destination"}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_requests_refused_total", Help: "HTTP requests refused by the proxy before reaching an upstream or the app, by reason.",
		}, []string{"direction", "source", "destination", "reason"}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_http_requests_rejected_total", Help: "Client requests refused by the HTTP/1.1 reader (or 421 over TLS), by reason.",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.Requests, m.Duration, m.Retries, m.BudgetExhausted, m.Ejections, m.Overflows, m.Refused, m.Rejected)
	}
	if reg != nil {
		reg.MustRegister(m.DroppedFields)
	}
	return m
}

func (m *Metrics) observe(direction, source, destination, route, version string, code int, start time.Time) {
	k := seriesKey{direction, source, destination, route, version, code}
	m.seriesMu.RLock()
	s := m.series[k]
	m.seriesMu.RUnlock()
	if s == nil {
		c := strconv.Itoa(code)
		s = &series{
			requests: m.Requests.WithLabelValues(direction, source, destination, route, version, c),
			duration: m.Duration.WithLabelValues(direction, source, destination, route, version, c),
		}
		m.seriesMu.Lock()
		if m.series == nil {
			m.series = map[seriesKey]*series{}
		}
		m.series[k] = s // the vectors return the same children for the same labels
		m.seriesMu.Unlock()
	}
	s.requests.Inc()
	s.duration.Observe(time.Since(start).Seconds())
}

// refused counts and logs a request refused before it went anywhere.
func (m *Metrics) refused(log *slog.Logger, r *http.Request, direction, source, destination string, e *badRequest) {
	m.refusedRequest(log, r.Context(), r.Method, r.URL.Path, r.Host, direction, source, destination, e)
}

// refusedRequest is refused for a request given by its parts.
func (m *Metrics) refusedRequest(log *slog.Logger, ctx context.Context, method, path, host, direction, source, destination string, e *badRequest) {
	m.Refused.WithLabelValues(direction, source, destination, e.reason).Inc()
	n, ok := m.refusals.Take(time.Now(), refusalsPerSecond)
	if !ok {
		return // counted above; a client sending junk must not flood the log
	}
	attrs := []slog.Attr{
		slog.String("direction", direction), slog.String("source", source), slog.String("destination", destination),
		slog.String("method", cut(method, 32)), slog.String("path", cut(path, 512)), slog.String("host", cut(host, 256)),
		slog.Int("status", e.status), slog.String("reason", e.reason), slog.String("why", e.msg),
	}
	if n > 0 {
		attrs = append(attrs, slog.Int("suppressed", n))
	}
	log.LogAttrs(ctx, slog.LevelInfo, "request refused", attrs...)
}

// refusalsPerSecond bounds the lines a proxy logs a second for requests
// it refused (each log site its own budget); the counters count all.
const refusalsPerSecond = 100

// dropUnderscored removes the header fields of r whose names contain '_'
// (see DropUnderscoreFields) and counts them.
func (m *Metrics) dropUnderscored(r *http.Request, direction string, meshOnly bool) {
	if n := DropUnderscoreFields(r.Header, meshOnly); n > 0 {
		m.DroppedFields.WithLabelValues(direction, "underscore").Add(float64(n))
	}
}
