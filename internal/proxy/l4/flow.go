package l4

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
)

// A flow is one open connection whose bytes reach the Bytes counters while
// it is open, at every collection (a Prometheus scrape, a traffic summary),
// and not only when it closes: a connection that lives for hours shows its
// traffic in every summary of its life, not as one burst at its end.
type flow struct {
	sent, received prometheus.Counter
	src            progresser
	// What the counters already have, under Metrics.flowMu.
	flushedSent, flushedReceived int64
}

// progresser gives a connection's bytes so far: sent to and received from
// the peer side.
type progresser interface{ Progress() (sent, received int64) }

// flows are the open flows of one Metrics.
type flows struct {
	mu   sync.Mutex
	open map[*flow]struct{}
}

// flushLocked adds to the counters what f moved since the last flush.
func (f *flow) flushLocked() {
	s, r := f.src.Progress()
	if d := s - f.flushedSent; d > 0 {
		f.sent.Add(float64(d))
		f.flushedSent = s
	}
	if d := r - f.flushedReceived; d > 0 {
		f.received.Add(float64(d))
		f.flushedReceived = r
	}
}

func (m *Metrics) openFlow(direction, service string, src progresser) *flow {
	f := &flow{
		sent:     m.Bytes.WithLabelValues(direction, service, "sent"),
		received: m.Bytes.WithLabelValues(direction, service, "received"),
		src:      src,
	}
	m.flows.mu.Lock()
	if m.flows.open == nil {
		m.flows.open = map[*flow]struct{}{}
	}
	m.flows.open[f] = struct{}{}
	m.flows.mu.Unlock()
	return f
}

// closeFlow counts what f moved since the last flush and forgets it.
func (m *Metrics) closeFlow(f *flow) {
	m.flows.mu.Lock()
	delete(m.flows.open, f)
	f.flushLocked()
	m.flows.mu.Unlock()
}

// Flush adds the bytes that open connections moved since the last flush
// to the Bytes counters. Collecting the metrics through the registry does
// it first; a reader of Bytes itself calls it.
func (m *Metrics) Flush() {
	m.flows.mu.Lock()
	defer m.flows.mu.Unlock()
	for f := range m.flows.open {
		f.flushLocked()
	}
}

// Splice splices the tunnel stream s with local (tunnel.Stream.Splice),
// counting the bytes under direction and service as they move.
func (m *Metrics) Splice(direction, service string, s *tunnel.Stream, local net.Conn) {
	f := m.openFlow(direction, service, s)
	s.Splice(local)
	m.closeFlow(f)
}

// joinCounts are a Join's counts as it copies: received from the peer
// side, sent to it.
type joinCounts struct{ received, sent atomic.Int64 }

func (c *joinCounts) Progress() (sent, received int64) { return c.sent.Load(), c.received.Load() }

// Join joins peer (the side the direction's peer is on: the client of an
// edge or gateway listener) with local (Join), counting the bytes under
// direction and service as they move; received starts at already (bytes
// read from peer and sent on before the join).
func (m *Metrics) Join(direction, service string, peer, local net.Conn, halfClose time.Duration, already int64) {
	c := &joinCounts{}
	c.received.Store(already)
	f := m.openFlow(direction, service, c)
	join(peer, local, halfClose, &c.received, &c.sent)
	m.closeFlow(f)
}

// bytesCollector collects Bytes after a flush, so that a scrape sees the
// bytes of open connections.
type bytesCollector struct{ m *Metrics }

func (c bytesCollector) Describe(ch chan<- *prometheus.Desc) { c.m.Bytes.Describe(ch) }

func (c bytesCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.Flush()
	c.m.Bytes.Collect(ch)
}
