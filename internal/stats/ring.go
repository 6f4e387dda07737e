package stats

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Ring defaults.
const (
	// DefaultInterval is the ring's aggregation interval, and the
	// proxies' default summary interval.
	DefaultInterval = 5 * time.Second
	// Keep is how far back the ring holds summaries.
	Keep = 15 * time.Minute
	// DefaultMaxKeys bounds the keys of one interval: beyond it, a new
	// key's counts are folded into its service's Other key.
	DefaultMaxKeys = 5000
	// DefaultMaxServiceKeys bounds the keys one service's proxies may
	// add to one interval, so that one service churning keys (made up by
	// a compromised proxy, or labels gone wild) cannot fill the slot and
	// fold the others' keys: beyond it, that service's new keys are
	// folded into its Other key.
	DefaultMaxServiceKeys = DefaultMaxKeys / 10
	// MinWindow and MaxWindow bound a query's window.
	MinWindow = time.Minute
	MaxWindow = Keep
)

// RingConfig configures a Ring; the zero value means the defaults.
type RingConfig struct {
	// Interval is the width of one slot; default DefaultInterval. Keep
	// is divided into slots of this width.
	Interval time.Duration
	// MaxKeys bounds the keys of one slot; default DefaultMaxKeys.
	MaxKeys int
	// MaxServiceKeys bounds the keys the summaries of one service add
	// to one slot; default DefaultMaxServiceKeys (at most MaxKeys).
	MaxServiceKeys int
}

// Ring holds the last Keep of summaries, summed per interval slot across
// the proxies that sent them. Its memory is bounded: Keep/Interval slots
// of at most MaxKeys keys. Safe for concurrent use.
type Ring struct {
	interval   time.Duration
	maxKeys    int
	maxSvcKeys int

	mu sync.Mutex // guards what follows
	// slots[i % len(slots)] holds slot i: the summaries whose interval's
	// middle falls in [i*interval, (i+1)*interval).
	slots []slot
	// names interns the names of keys, shared by every slot.
	names map[string]string
	// folded counts keys folded because a slot was full.
	folded uint64
	// gen counts the changes to the ring's own slots (Export's cursor).
	gen uint64
	// peerAt is when a peer's push was last merged (Merge); zero if
	// never.
	peerAt time.Time
}

type slot struct {
	idx int64
	// counts are the summaries this server received itself.
	counts map[Key]*Counts
	// byService counts the keys of counts each reporting service added.
	byService map[string]int
	// gen is the ring's gen at the last change to counts.
	gen uint64
	// peers are the peers' figures for the slot, by origin server: each
	// replaced whole by the origin's next push of the slot, and never
	// exported again.
	peers map[string]map[Key]*Counts
	// merged sums the peers' figures once the slot is past foldAfter
	// (Merge), and folded names the origins summed in it: a later push
	// of the slot from one of them is ignored.
	merged map[Key]*Counts
	folded map[string]bool
}

// NewRing returns an empty ring.
func NewRing(cfg RingConfig) *Ring {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.MaxServiceKeys <= 0 {
		cfg.MaxServiceKeys = DefaultMaxServiceKeys
	}
	cfg.MaxServiceKeys = min(cfg.MaxServiceKeys, cfg.MaxKeys)
	n := int(Keep / cfg.Interval)
	r := &Ring{interval: cfg.Interval, maxKeys: cfg.MaxKeys, maxSvcKeys: cfg.MaxServiceKeys, slots: make([]slot, n), names: map[string]string{}}
	for i := range r.slots {
		r.slots[i].idx = -1
	}
	return r
}

// Interval is the ring's slot width.
func (r *Ring) Interval() time.Duration { return r.interval }

// Folded is the number of keys folded so far because a slot was full.
func (r *Ring) Folded() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.folded
}

// Add files a validated summary received at the time at: in the slot of
// the middle of the interval it covers (the server's clock, not the
// proxy's, places it).
func (r *Ring) Add(s *Summary, at time.Time) {
	idx := at.Add(-s.Interval()/2).UnixNano() / int64(r.interval)
	r.mu.Lock()
	defer r.mu.Unlock()
	sl := &r.slots[int(idx%int64(len(r.slots)))]
	switch {
	case sl.idx > idx:
		return // older than the ring
	case sl.idx < idx:
		sl.reset(idx)
	}
	r.gen++
	sl.gen = r.gen
	if len(r.names) > 1<<16 {
		r.names = map[string]string{} // names churned: start again
	}
	for i := range s.Entries {
		e := &s.Entries[i]
		if e.zero() {
			continue
		}
		k := r.intern(e.Key)
		c := sl.counts[k]
		if c == nil {
			if len(sl.counts) >= r.maxKeys || sl.byService[s.Service] >= r.maxSvcKeys {
				r.folded++
				k = otherKey(k.Direction, s.Service)
				k.Source, k.Destination = r.name(k.Source), r.name(k.Destination)
				c = sl.counts[k]
			}
			if c == nil {
				c = &Counts{}
				sl.counts[k] = c
				sl.byService[r.name(s.Service)]++
			}
		}
		c.Add(&e.Counts)
	}
}

func (r *Ring) intern(k Key) Key {
	return Key{Direction: r.name(k.Direction), Source: r.name(k.Source), Destination: r.name(k.Destination), Route: r.name(k.Route), Version: r.name(k.Version)}
}

func (r *Ring) name(s string) string {
	if n, ok := r.names[s]; ok {
		return n
	}
	r.names[s] = s
	return s
}

// Query is a question to the ring.
type Query struct {
	// Window is how far back to look, MinWindow to MaxWindow.
	Window time.Duration
	// Service, when set, keeps only that service and the edges to and
	// from it.
	Service string
}

// ParseWindow reads a window parameter ("1m" to "15m").
func ParseWindow(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration such as 1m or 5m", s)
	}
	if d < MinWindow || d > MaxWindow {
		return 0, fmt.Errorf("%q is not between %v and %v", s, MinWindow, MaxWindow)
	}
	return d, nil
}

// acc sums a figure's counts over the slots it was measured in.
type acc struct {
	first  int64 // the slot it was first seen in; not counted (partial)
	counts Counts
}

// outKey names one figure of a query's answer.
type outKey struct {
	kind       byte // 's' service, 'v' version, 'e' edge, 'r' route
	a, b, c, d string
}

// Stats answers q at the time now from the slots that ended before now
// (less a grace period for summaries in flight, and one interval more
// while peers push: their last push of a slot comes in the interval
// after it, see Merge). A figure first seen in
// the ring is measured from the slot after its first one: that first one
// is likely partial (traffic or a proxy that started within it), and
// counting it would understate the rate.
func (r *Ring) Stats(q Query, now time.Time) v1.Stats {
	grace := min(r.interval/2, 2*time.Second)
	r.mu.Lock()
	if !r.peerAt.IsZero() && now.Sub(r.peerAt) < Keep {
		grace += r.interval
	}
	r.mu.Unlock()
	last := now.Add(-grace).UnixNano()/int64(r.interval) - 1
	wslots := int64(q.Window / r.interval)
	if wslots < 1 {
		wslots = 1
	}
	from := last - wslots // exclusive

	accs := map[outKey]*acc{}
	r.mu.Lock()
	order := make([]*slot, 0, len(r.slots))
	for i := range r.slots {
		sl := &r.slots[i]
		if sl.idx >= 0 && sl.idx <= last && sl.idx > last-int64(len(r.slots)) {
			order = append(order, sl)
		}
	}
	slices.SortFunc(order, func(a, b *slot) int { return cmp.Compare(a.idx, b.idx) })
	add := func(sl *slot, counts map[Key]*Counts) {
		for k, c := range counts {
			for _, ok := range outKeys(k) {
				if q.Service != "" && !ok.concerns(q.Service) {
					continue
				}
				a := accs[ok]
				if a == nil {
					accs[ok] = &acc{first: sl.idx}
					continue
				}
				if sl.idx > from && sl.idx > a.first {
					a.counts.Add(c)
				}
			}
		}
	}
	for _, sl := range order {
		add(sl, sl.counts)
		add(sl, sl.merged)
		for _, m := range sl.peers {
			add(sl, m)
		}
	}
	r.mu.Unlock()

	traffic := func(a *acc) v1.Traffic {
		n := last - max(from, a.first)
		return toTraffic(&a.counts, time.Duration(n)*r.interval)
	}
	out := v1.Stats{
		Window: q.Window.String(), At: now.UTC(), IntervalSeconds: r.interval.Seconds(),
		Services: []v1.ServiceStats{}, Edges: []v1.EdgeStats{},
	}
	svc := map[string]*v1.ServiceStats{}
	edge := map[[2]string]*v1.EdgeStats{}
	// Services and edges first, then their versions and routes.
	for k, a := range accs {
		switch k.kind {
		case 's':
			svc[k.a] = &v1.ServiceStats{Name: k.a, Traffic: traffic(a)}
		case 'e':
			edge[[2]string{k.a, k.b}] = &v1.EdgeStats{Source: k.a, Destination: k.b, Traffic: traffic(a)}
		}
	}
	for k, a := range accs {
		switch k.kind {
		case 'v':
			if s := svc[k.a]; s != nil {
				s.Versions = append(s.Versions, v1.VersionStats{Version: k.b, Traffic: traffic(a)})
			}
		case 'r':
			if e := edge[[2]string{k.a, k.b}]; e != nil {
				e.Routes = append(e.Routes, v1.RouteStats{Route: k.c, Version: k.d, Traffic: traffic(a)})
			}
		}
	}
	for _, s := range svc {
		slices.SortFunc(s.Versions, func(a, b v1.VersionStats) int { return cmp.Compare(a.Version, b.Version) })
		out.Services = append(out.Services, *s)
	}
	for _, e := range edge {
		slices.SortFunc(e.Routes, func(a, b v1.RouteStats) int {
			return cmp.Or(cmp.Compare(a.Route, b.Route), cmp.Compare(a.Version, b.Version))
		})
		out.Edges = append(out.Edges, *e)
	}
	slices.SortFunc(out.Services, func(a, b v1.ServiceStats) int {
		return cmp.Or(cmp.Compare(b.RequestsPerSecond, a.RequestsPerSecond), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(out.Edges, func(a, b v1.EdgeStats) int {
		return cmp.Or(cmp.Compare(b.RequestsPerSecond, a.RequestsPerSecond), cmp.Compare(a.Source, b.Source), cmp.Compare(a.Destination, b.Destination))
	})
	return out
}

// outKeys are the figures a ring key counts towards: inbound traffic
// makes a service's (and its version's) figures, outbound traffic an
// edge's (and its route's).
func outKeys(k Key) [2]outKey {
	if k.Direction == Inbound {
		return [2]outKey{{kind: 's', a: k.Destination}, {kind: 'v', a: k.Destination, b: k.Version}}
	}
	return [2]outKey{{kind: 'e', a: k.Source, b: k.Destination}, {kind: 'r', a: k.Source, b: k.Destination, c: k.Route, d: k.Version}}
}

func (k outKey) concerns(service string) bool {
	if k.kind == 's' || k.kind == 'v' {
		return k.a == service
	}
	return k.a == service || k.b == service
}

// Topology answers q as a graph: a node for every service in known or
// in the figures, an edge for every edge with traffic.
func (r *Ring) Topology(q Query, now time.Time, known []string) v1.Topology {
	st := r.Stats(q, now)
	nodes := map[string]v1.TopologyNode{}
	for _, n := range known {
		if q.Service == "" || n == q.Service {
			nodes[n] = v1.TopologyNode{Name: n}
		}
	}
	for _, s := range st.Services {
		nodes[s.Name] = v1.TopologyNode{Name: s.Name, Traffic: s.Traffic}
	}
	for _, e := range st.Edges {
		for _, n := range []string{e.Source, e.Destination} {
			if _, ok := nodes[n]; !ok {
				nodes[n] = v1.TopologyNode{Name: n}
			}
		}
	}
	t := v1.Topology{Window: st.Window, At: st.At, Nodes: []v1.TopologyNode{}, Edges: st.Edges}
	for _, n := range nodes {
		t.Nodes = append(t.Nodes, n)
	}
	slices.SortFunc(t.Nodes, func(a, b v1.TopologyNode) int { return cmp.Compare(a.Name, b.Name) })
	return t
}

var classes = [5]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// toTraffic turns counts measured over d into figures.
func toTraffic(c *Counts, d time.Duration) v1.Traffic {
	t := v1.Traffic{Requests: c.Requests(), Connections: c.Connections, Retries: c.Retries, Denied: c.Denied}
	if d > 0 {
		t.RequestsPerSecond = float64(t.Requests) / d.Seconds()
		t.BytesPerSecond = float64(c.BytesSent+c.BytesReceived) / d.Seconds()
	}
	if t.Requests > 0 {
		ok := float64(t.Requests-c.Codes[4]) / float64(t.Requests)
		t.SuccessRate = &ok
		t.Codes = map[string]uint64{}
		for i, n := range c.Codes {
			if n > 0 {
				t.Codes[classes[i]] = n
			}
		}
	}
	t.P50Ms = Quantile(&c.Latency, 0.50) * 1000
	t.P90Ms = Quantile(&c.Latency, 0.90) * 1000
	t.P99Ms = Quantile(&c.Latency, 0.99) * 1000
	return t
}

// Quantile estimates the q-quantile (0 to 1) in seconds from latency
// bucket counts, interpolating linearly within the bucket it falls in
// (as Prometheus's histogram_quantile does); the last, open bucket
// answers its lower bound. Zero without counts.
func Quantile(b *[NumBuckets]uint64, q float64) float64 {
	var total uint64
	for _, n := range b {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var cum float64
	for i, n := range b {
		if n == 0 {
			continue
		}
		if cum+float64(n) >= rank {
			if i == len(LatencyBounds) {
				return LatencyBounds[i-1]
			}
			lower := 0.0
			if i > 0 {
				lower = LatencyBounds[i-1]
			}
			return lower + (LatencyBounds[i]-lower)*(rank-cum)/float64(n)
		}
		cum += float64(n)
	}
	return LatencyBounds[len(LatencyBounds)-1]
}
