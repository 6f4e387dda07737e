package control

import (
	"fmt"
	"net/http"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/stats"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// Traffic summaries: proxies send one every stats interval on their ADS
// stream (a request of type stats.SummaryType); the server checks that it
// is the proxy's own traffic, files it in its ring (memory only, never
// the store), and answers /v1/stats and /v1/topology from the ring. Each
// server holds the summaries of the proxies connected to it.

type statsMetrics struct {
	summaries *prometheus.CounterVec
	folded    prometheus.CounterFunc
}

func newStatsMetrics(reg prometheus.Registerer, ring *stats.Ring) *statsMetrics {
	m := &statsMetrics{
		summaries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_control_summaries_total", Help: "Traffic summaries received from proxies, by result (accepted|refused).",
		}, []string{"result"}),
		folded: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "trellis_control_summary_keys_folded_total", Help: "Summary keys folded into their service's \"*\" key because an interval held the most keys the server keeps.",
		}, func() float64 { return float64(ring.Folded()) }),
	}
	reg.MustRegister(m.summaries, m.folded)
	return m
}

// summary files a proxy's traffic summary, or refuses it: a malformed
// summary, or one that is not the proxy's own traffic, is logged and
// answered with the reason; the stream goes on (its snapshots matter more
// than its statistics).
func (ps *proxyStream) summary(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer, r *discoveryv3.DiscoveryRequest) error {
	s := ps.s
	sum, err := xds.SummaryFrom(r)
	if err == nil {
		err = stats.ValidateFrom(sum, ps.reg.Service, ps.reg.Instance, ps.reg.Version)
	}
	now := time.Now()
	if err == nil {
		err = ps.pacer.pace(sum, ps.status.ConnectedAt, now)
	}
	if err != nil {
		s.statsm.summaries.WithLabelValues("refused").Inc()
		s.logRefusal("traffic summary refused", "instance", ps.reg.Instance, "service", ps.reg.Service, "reason", err.Error())
		return stream.Send(xds.SummaryRefusal(err.Error()))
	}
	s.statsm.summaries.WithLabelValues("accepted").Inc()
	s.stats.Add(sum, now)
	return nil
}

// Pacing of one stream's summaries. A proxy sends one per stats interval
// (1s at least) and none within half an interval of the last; a stream
// may send summaryBurst at once (a reconnect, a last one on shutdown),
// then one per summaryEvery. Faster ones are refused: they would only
// be a proxy inflating its figures or churning keys.
const (
	summaryEvery = 500 * time.Millisecond
	summaryBurst = 3
)

// summaryPacer is one stream's pacing state; the stream's goroutine owns
// it (wait calls summary).
type summaryPacer struct {
	tokens float64   // summaries it may send now, at most summaryBurst
	at     time.Time // when tokens was last computed
	last   time.Time // when the last summary was accepted; zero if none
}

// pace refuses a summary that comes too soon, and bounds the time it
// says it covers by the time since the stream's last summary (or since
// the stream opened, at opened): the server places a summary by that
// time (Ring.Add), and a proxy claiming ten minutes on a stream a second
// old would file its counts into slots that were counted already.
func (p *summaryPacer) pace(sum *stats.Summary, opened, now time.Time) error {
	if p.at.IsZero() {
		p.tokens, p.at = summaryBurst, now
	}
	p.tokens = min(summaryBurst, p.tokens+float64(now.Sub(p.at))/float64(summaryEvery))
	p.at = now
	if p.tokens < 1 {
		return fmt.Errorf("summaries come faster than one every %v (a burst of %d): refused", summaryEvery, summaryBurst)
	}
	p.tokens--
	since := opened
	if !p.last.IsZero() {
		since = p.last
	}
	p.last = now
	if covered := now.Sub(since); !since.IsZero() && covered < sum.Interval() {
		sum.IntervalMS = max(covered.Milliseconds(), 1)
	}
	return nil
}

// statsQuery reads the query parameters of /v1/stats and /v1/topology:
// window (1m to 15m, default 1m) and service; any other is refused.
func statsQuery(r *http.Request) (stats.Query, error) {
	q := stats.Query{Window: stats.MinWindow}
	for k, v := range r.URL.Query() {
		if len(v) != 1 {
			return q, badRequest("query parameter %s: given %d times, want once", k, len(v))
		}
		switch k {
		case "window":
			w, err := stats.ParseWindow(v[0])
			if err != nil {
				return q, badRequest("query parameter window: %v", err)
			}
			q.Window = w
		case "service":
			if err := identity.ValidateServiceName(v[0]); err != nil {
				return q, badRequest("query parameter service: %v", err)
			}
			q.Service = v[0]
		default:
			return q, badRequest("query parameter %q: unknown (want window or service)", k)
		}
	}
	return q, nil
}

func (s *Server) getStats(_ principal, r *http.Request) (any, error) {
	q, err := statsQuery(r)
	if err != nil {
		return nil, err
	}
	return s.stats.Stats(q, time.Now()), nil
}

func (s *Server) getTopology(_ principal, r *http.Request) (any, error) {
	q, err := statsQuery(r)
	if err != nil {
		return nil, err
	}
	m := s.state.mesh()
	known := make([]string, 0, len(m.Services)+len(m.Instances))
	for n := range m.Services {
		known = append(known, n)
	}
	for n := range m.Instances {
		known = append(known, n)
	}
	return s.stats.Topology(q, time.Now(), known), nil
}
