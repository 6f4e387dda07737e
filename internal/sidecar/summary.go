package sidecar

import (
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/trellis-mesh/trellis/internal/stats"
)

// summarizer builds the proxy's traffic summaries from the counters the
// data plane keeps anyway (the L7 and L4 Prometheus metrics): nothing is
// added per request. Each summary holds what those counters gained since
// the last one. Owned by the control stream's goroutine.
type summarizer struct {
	p *Proxy
	// prev is each series' value at the last summary (or baseline); its
	// size is the metrics' own cardinality.
	prev map[string]float64
	// last is when prev was read; zero before a baseline.
	last time.Time
}

// malformed are the L7 refusal reasons that are not authorization
// decisions: they do not count as denials.
var malformed = map[string]bool{
	"bad_method": true, "bad_host": true, "bad_target": true, "bad_path": true,
	"too_large": true, "connect": true, "bad_request": true,
}

// nextSummary is how long until the next multiple of the stats interval
// on the wall clock: proxies that share a clock report the same intervals.
func (p *Proxy) nextSummary(now time.Time) time.Duration {
	i := p.cfg.StatsInterval
	return i - time.Duration(now.UnixNano()%int64(i))
}

// baseline reads the counters without reporting them: what was counted
// before (while no stream was open) is not a summary's.
func (z *summarizer) baseline(now time.Time) {
	z.prev = map[string]float64{}
	z.read()
	z.last = now
}

// take returns what the counters gained since the last summary, bounded
// (stats.Summary.Bound), or nil when too little time passed (less than
// half an interval: those counts go into the next one) or nothing was
// counted.
func (z *summarizer) take(now time.Time) *stats.Summary {
	el := now.Sub(z.last)
	if z.last.IsZero() || el > 10*time.Minute {
		z.baseline(now)
		return nil
	}
	if el < z.p.cfg.StatsInterval/2 || el < 100*time.Millisecond {
		return nil
	}
	entries := z.read()
	z.last = now
	s := &stats.Summary{Instance: z.p.cfg.Instance, Service: z.p.cfg.Service, IntervalMS: el.Milliseconds()}
	for _, e := range entries {
		// A label that is no service name (a pass-through target named
		// by its SNI, say) would have the server refuse the summary:
		// such traffic is left out.
		if e.Counts != (stats.Counts{}) && e.Validate(s.Service) == nil {
			s.Entries = append(s.Entries, *e)
		}
	}
	if len(s.Entries) == 0 {
		return nil
	}
	s.Bound()
	return s
}

// read collects the counters, updates prev, and returns the gains by key.
func (z *summarizer) read() map[stats.Key]*stats.Entry {
	own, version := z.p.cfg.Service, z.p.cfg.Version
	out := map[stats.Key]*stats.Entry{}
	entry := func(k stats.Key) *stats.Counts {
		e := out[k]
		if e == nil {
			e = &stats.Entry{Key: k}
			out[k] = e
		}
		return &e.Counts
	}
	// keyFor maps a metric's direction and peer to a summary key; ok is
	// false for traffic that is not an edge of this service. A gateway's
	// pass-through and network connections are its edges to the service
	// they reach (when it is known).
	keyFor := func(direction, peer string) (stats.Key, bool) {
		switch direction {
		case "outbound", "passthrough", "network":
			return stats.Key{Direction: stats.Outbound, Source: own, Destination: peer}, peer != ""
		case "inbound":
			return stats.Key{Direction: stats.Inbound, Source: peer, Destination: own, Version: version}, true
		case "edge", "ingress":
			// Callers outside the mesh, at the edge or a gateway's
			// listener: the proxy's own service received them.
			return stats.Key{Direction: stats.Inbound, Destination: own, Version: version}, true
		}
		return stats.Key{}, false
	}
	l7m, l4m := z.p.l7m, z.p.l4m
	// Requests, by direction, source, destination, route, version, code.
	collect("req", l7m.Requests, func(id string, l labels, m *dto.Metric) {
		k, ok := l7Key(keyFor, l, own)
		code, err := strconv.Atoi(l.get("code"))
		if !ok || err != nil || code < 100 || code > 599 {
			return
		}
		entry(k).Codes[code/100-1] += z.delta(id, m.GetCounter().GetValue())
	})
	collect("dur", l7m.Duration, func(id string, l labels, m *dto.Metric) {
		k, ok := l7Key(keyFor, l, own)
		if !ok {
			return
		}
		c := entry(k)
		h := m.GetHistogram()
		var prevCum uint64
		for i, b := range h.GetBucket() {
			if i >= len(stats.LatencyBounds) {
				break
			}
			cum := z.delta(id+"\xfe"+strconv.Itoa(i), float64(b.GetCumulativeCount()))
			c.Latency[i] += cum - min(prevCum, cum)
			prevCum = cum
		}
		all := z.delta(id+"\xfe+Inf", float64(h.GetSampleCount()))
		c.Latency[len(stats.LatencyBounds)] += all - min(prevCum, all)
	})
	// Retries, by source, destination, route: outbound.
	collect("retry", l7m.Retries, func(id string, l labels, m *dto.Metric) {
		if l.get("source") != own {
			return
		}
		k := stats.Key{Direction: stats.Outbound, Source: own, Destination: l.get("destination"), Route: l.get("route")}
		if k.Destination != "" {
			entry(k).Retries += z.delta(id, m.GetCounter().GetValue())
		}
	})
	// Refused, by direction, source, destination, reason: the inbound
	// authorization refusals are denials.
	collect("refused", l7m.Refused, func(id string, l labels, m *dto.Metric) {
		if malformed[l.get("reason")] || l.get("direction") != "inbound" {
			return
		}
		if k, ok := keyFor("inbound", l.get("source")); ok {
			entry(k).Denied += z.delta(id, m.GetCounter().GetValue())
		}
	})
	// L4: connections by direction, service, result; bytes by
	// direction, service, flow; denials by service, reason.
	collect("conns", l4m.Connections, func(id string, l labels, m *dto.Metric) {
		if k, ok := keyFor(l.get("direction"), l.get("service")); ok {
			entry(k).Connections += z.delta(id, m.GetCounter().GetValue())
		}
	})
	// Open connections' bytes so far count too, not only closed ones'.
	l4m.Flush()
	collect("bytes", l4m.Bytes, func(id string, l labels, m *dto.Metric) {
		k, ok := keyFor(l.get("direction"), l.get("service"))
		if !ok {
			return
		}
		n := z.delta(id, m.GetCounter().GetValue())
		if l.get("flow") == "sent" {
			entry(k).BytesSent += n
		} else {
			entry(k).BytesReceived += n
		}
	})
	collect("denied", l4m.Denied, func(id string, l labels, m *dto.Metric) {
		if k, ok := keyFor("inbound", l.get("service")); ok {
			entry(k).Denied += z.delta(id, m.GetCounter().GetValue())
		}
	})
	return out
}

// l7Key is the key of an L7 request series: its route and version are
// kept for outbound traffic (the route rule and the version chosen).
func l7Key(keyFor func(string, string) (stats.Key, bool), l labels, own string) (stats.Key, bool) {
	d := l.get("direction")
	peer := l.get("source")
	if d == "outbound" {
		if l.get("source") != own {
			return stats.Key{}, false
		}
		peer = l.get("destination")
	}
	k, ok := keyFor(d, peer)
	if ok && d == "outbound" {
		k.Route, k.Version = l.get("route"), l.get("version")
	}
	return k, ok
}

// delta returns what series id gained since prev and records v.
func (z *summarizer) delta(id string, v float64) uint64 {
	p, seen := z.prev[id]
	z.prev[id] = v
	if !seen || v < p {
		// A series born since the last read counts from zero.
		p = 0
	}
	return uint64(v - p)
}

// labels are one series' label pairs.
type labels []*dto.LabelPair

func (l labels) get(name string) string {
	for _, p := range l {
		if p.GetName() == name {
			return p.GetValue()
		}
	}
	return ""
}

// collect reads every series of c and calls fn with an id unique to the
// series (name and its label values).
func collect(name string, c prometheus.Collector, fn func(id string, l labels, m *dto.Metric)) {
	ch := make(chan prometheus.Metric, 64)
	// Collect ends once it has sent every series; this function, which
	// drains ch to its close, owns the goroutine.
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil {
			continue
		}
		var b strings.Builder
		b.WriteString(name)
		for _, p := range d.GetLabel() {
			b.WriteByte(0xff)
			b.WriteString(p.GetValue())
		}
		fn(b.String(), labels(d.GetLabel()), &d)
	}
}
