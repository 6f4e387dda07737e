package tracing

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
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
	q       *queue
	version string
	// bound: a trace this proxy starts is sampled when the upper 63 bits
	// of its trace ID's last 8 bytes are below it, as the OpenTelemetry
	// TraceIDRatioBased sampler decides.
	bound uint64
	all   bool // sampling 1: every trace
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
// goroutine.
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
	var s sender = newHTTPSender(cfg.Endpoint)
	if cfg.Endpoint.Protocol == ProtocolGRPC {
		g, err := newGRPCSender(cfg.Endpoint)
		if err != nil {
			return nil, fmt.Errorf("otlp exporter for %s: %w", cfg.Endpoint, err)
		}
		s = g
	}
	resource := []attr{{key: "service.name", s: cfg.Service}}
	if cfg.Version != "" {
		resource = append(resource, attr{key: "service.version", s: cfg.Version})
	}
	if cfg.Instance != "" {
		resource = append(resource, attr{key: "service.instance.id", s: cfg.Instance})
	}
	return &Tracer{
		q: newQueue(cfg.QueueSize, s, resource, o.Metrics, o.Logger), version: cfg.Version,
		bound: uint64(cfg.Sampling * (1 << 63)), all: cfg.Sampling >= 1,
	}, nil
}

// Shutdown exports the spans still queued, until ctx ends, and stops the
// exporter.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.q.shutdown(ctx)
}

// ForceFlush exports every span ended so far, until ctx ends.
func (t *Tracer) ForceFlush(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.q.flush(ctx)
}

// attr is a span or resource attribute: a string, or an integer.
type attr struct {
	key   string
	s     string
	i     int64
	isInt bool
}

// Span is one hop's span. Its methods do nothing on a nil *Span; End may
// be called more than once, the first call counts.
type Span struct {
	t     *Tracer
	ended atomic.Bool
	span
}

// span is what is exported of a Span.
type span struct {
	sc           spanContext // sc.sampled: recorded and exported
	parent       [8]byte     // zero: a root span
	remoteParent bool
	tracestate   string
	name         string
	kind         int
	start, end   time.Time
	attrs        []attr
	errorMsg     string // not empty: status error
}

// startFrom starts a span as the child of the span a traceparent names
// (the request's first), or of none; a new trace is sampled at the
// tracer's ratio. tracestate are the request's tracestate values.
func (t *Tracer) startFrom(traceparent string, tracestate []string, name string, kind int) *Span {
	sp := &Span{t: t}
	sp.name, sp.kind, sp.start = name, kind, time.Now()
	if p, err := parseTraceparent(traceparent); err == nil {
		sp.sc.traceID, sp.parent, sp.remoteParent, sp.sc.sampled = p.traceID, p.spanID, true, p.sampled
		if ts := strings.Join(tracestate, ","); len(ts) <= maxTracestate {
			sp.tracestate = ts
		}
	} else {
		for sp.sc.traceID == ([16]byte{}) {
			binary.BigEndian.PutUint64(sp.sc.traceID[:8], rand.Uint64())
			binary.BigEndian.PutUint64(sp.sc.traceID[8:], rand.Uint64())
		}
		sp.sc.sampled = t.all || binary.BigEndian.Uint64(sp.sc.traceID[8:])>>1 < t.bound
	}
	for sp.sc.spanID == ([8]byte{}) {
		binary.BigEndian.PutUint64(sp.sc.spanID[:], rand.Uint64())
	}
	return sp
}

// StartClient starts the client span of a request a proxy sends on to
// the service peer, as the child of the span h's traceparent names (a
// new trace without one), and makes h's traceparent name the new span.
func (t *Tracer) StartClient(h http.Header, method, peer string) *Span {
	sp := t.StartClientFrom(h.Get("Traceparent"), h.Values("Tracestate"), method, peer)
	sp.Inject(h)
	return sp
}

// StartClientFrom is StartClient for a request given by its traceparent
// (the first) and tracestate values; the caller sets the request's trace
// context to the span's (Traceparent, Tracestate), as Inject does.
func (t *Tracer) StartClientFrom(traceparent string, tracestate []string, method, peer string) *Span {
	sp := t.startFrom(traceparent, tracestate, method+" "+peer, kindClient)
	if sp.sc.sampled {
		sp.attrs = make([]attr, 0, 6)
		sp.attrs = append(sp.attrs, attr{key: AttrMethod, s: method}, attr{key: AttrPeerService, s: peer})
	}
	return sp
}

// StartServer starts the server span of a request a proxy received from
// the service peer ("" for a caller without a mesh identity) for its
// app, service, as the child of the span h's traceparent names. Inject
// then hands the app the new span's traceparent.
func (t *Tracer) StartServer(h http.Header, method, peer, service string) *Span {
	return t.StartServerFrom(h.Get("Traceparent"), h.Values("Tracestate"), method, peer, service)
}

// StartServerFrom is StartServer for a request given by its traceparent
// (the first) and tracestate values.
func (t *Tracer) StartServerFrom(traceparent string, tracestate []string, method, peer, service string) *Span {
	sp := t.startFrom(traceparent, tracestate, method+" "+service, kindServer)
	if sp.sc.sampled {
		sp.attrs = make([]attr, 0, 4)
		sp.attrs = append(sp.attrs, attr{key: AttrMethod, s: method})
		if peer != "" {
			sp.attrs = append(sp.attrs, attr{key: AttrPeerService, s: peer})
		}
		if t.version != "" {
			sp.attrs = append(sp.attrs, attr{key: AttrVersion, s: t.version})
		}
	}
	return sp
}

// Inject sets h's traceparent to the span's, and its tracestate to the
// one the span carries on (none when the request's was not valid).
func (s *Span) Inject(h http.Header) {
	if s == nil {
		return
	}
	delete(h, "Tracestate")
	h.Set("Traceparent", s.sc.traceparent())
	if s.tracestate != "" {
		h.Set("Tracestate", s.tracestate)
	}
}

// Traceparent is the traceparent naming the span, and Tracestate the
// tracestate it carries on ("" for none): what Inject sets.
func (s *Span) Traceparent() string { return s.sc.traceparent() }

// Tracestate: see Traceparent.
func (s *Span) Tracestate() string { return s.tracestate }

// End ends the span with what the hop came to: the route and the
// version that answered (client spans; "" when none), the status code,
// and how many attempts it took (client spans).
func (s *Span) End(route, version string, status, attempts int) {
	if s == nil || s.ended.Swap(true) || !s.sc.sampled {
		return
	}
	s.end = time.Now()
	s.attrs = append(s.attrs, attr{key: AttrStatus, i: int64(status), isInt: true})
	client := s.kind == kindClient
	if client {
		s.attrs = append(s.attrs, attr{key: AttrRoute, s: route}, attr{key: AttrResends, i: int64(max(attempts-1, 0)), isInt: true})
		if version != "" {
			s.attrs = append(s.attrs, attr{key: AttrVersion, s: version})
		}
	}
	// As the HTTP conventions have it: a client sees 4xx as its request
	// failing, a server only 5xx as its own failure.
	if status >= 500 || client && status >= 400 {
		s.errorMsg = strings.TrimSpace(http.StatusText(status))
		if s.errorMsg == "" {
			s.errorMsg = "status " + fmt.Sprint(status)
		}
	}
	s.t.q.add(&s.span)
}
