package stats

import (
	"fmt"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"
)

// base is a time on a 5 s boundary.
var base = time.Unix(1_000_000_000, 0)

// feed sends the ring n summaries per proxy as proxies at a steady load
// would: proxy summaries at each 5 s boundary (received 10 ms after), the
// first covering only part of its interval.
func feed(r *Ring, n int) {
	for k := 1; k <= n; k++ {
		at := base.Add(time.Duration(k)*5*time.Second + 10*time.Millisecond)
		// Per web proxy and interval: 6 ok and 1 failed to v1, 3 ok to
		// v2; the load started late in the first interval.
		ok1, f1, ok2 := uint64(6), uint64(1), uint64(3)
		if k == 1 {
			ok1, f1, ok2 = 3, 0, 0
		}
		for i := 1; i <= 2; i++ {
			s := &Summary{Instance: fmt.Sprintf("web-%d", i), Service: "web", IntervalMS: 5000, Entries: []Entry{
				entry(Outbound, "web", "api", "default", "v1", ok1, f1),
				entry(Outbound, "web", "api", "default", "v2", ok2, 0),
			}}
			r.Add(s, at)
		}
		r.Add(&Summary{Instance: "api-1", Service: "api", IntervalMS: 5000, Entries: []Entry{
			entry(Inbound, "web", "api", "", "v1", 2*ok1, 2*f1),
			entry(Inbound, "web", "api", "", "v2", 2*ok2, 0),
		}}, at)
	}
}

func near(got, want float64) bool { return math.Abs(got-want) < 1e-9 }

// rate shows a success rate for a message.
func rate(p *float64) string {
	if p == nil {
		return "none"
	}
	return fmt.Sprint(*p)
}

func TestRingStats(t *testing.T) {
	r := NewRing(RingConfig{})
	feed(r, 20)
	// 3 s after the 20th boundary: the 20th interval is complete.
	now := base.Add(100*time.Second + 3*time.Second)
	for _, w := range []time.Duration{time.Minute, 15 * time.Minute} {
		t.Run(w.String(), func(t *testing.T) {
			st := r.Stats(Query{Window: w}, now)
			if len(st.Edges) != 1 || len(st.Services) != 1 {
				t.Fatalf("got %d edges and %d services, want 1 and 1: %+v", len(st.Edges), len(st.Services), st)
			}
			e, s := st.Edges[0], st.Services[0]
			// Two proxies, 10 requests each per 5 s: 4/s. The partial first
			// interval is left out, so the longer window says the same.
			if e.Source != "web" || e.Destination != "api" || !near(e.RequestsPerSecond, 4) {
				t.Errorf("edge %s->%s: got %v requests/s, want 4", e.Source, e.Destination, e.RequestsPerSecond)
			}
			if e.SuccessRate == nil || !near(*e.SuccessRate, 0.9) {
				t.Errorf("edge success rate: got %s, want 0.9", rate(e.SuccessRate))
			}
			// Every request in the 2.5 ms to 5 ms bucket.
			if !near(e.P50Ms, 3.75) || !near(e.P99Ms, 4.975) {
				t.Errorf("edge p50, p99: got %v, %v ms, want 3.75, 4.975", e.P50Ms, e.P99Ms)
			}
			if len(e.Routes) != 2 || e.Routes[0].Version != "v1" || !near(e.Routes[0].RequestsPerSecond, 2.8) || !near(e.Routes[1].RequestsPerSecond, 1.2) {
				t.Errorf("routes: got %+v, want v1 at 2.8/s and v2 at 1.2/s", e.Routes)
			}
			if s.Name != "api" || !near(s.RequestsPerSecond, 4) || s.SuccessRate == nil || !near(*s.SuccessRate, 0.9) {
				t.Errorf("service: got %+v, want api at 4/s, 90%% success", s)
			}
			if len(s.Versions) != 2 || !near(s.Versions[0].RequestsPerSecond, 2.8) || s.Versions[1].SuccessRate == nil || *s.Versions[1].SuccessRate != 1 {
				t.Errorf("versions: got %+v", s.Versions)
			}
			if s.Codes["5xx"] == 0 || s.Codes["2xx"] == 0 {
				t.Errorf("codes: got %v, want 2xx and 5xx", s.Codes)
			}
		})
	}
	// A window ends at the last complete interval: right after the 20th
	// boundary it is still the 19th's.
	st := r.Stats(Query{Window: time.Minute}, base.Add(100*time.Second+500*time.Millisecond))
	if len(st.Edges) != 1 || !near(st.Edges[0].RequestsPerSecond, 4) {
		t.Errorf("before the grace period: got %+v, want 4/s", st.Edges)
	}
	// Long after the traffic stopped, nothing is left in the window.
	st = r.Stats(Query{Window: time.Minute}, now.Add(5*time.Minute))
	if len(st.Edges) != 1 || st.Edges[0].Requests != 0 || st.Edges[0].SuccessRate != nil {
		t.Errorf("after the traffic: got %+v, want the edge with no requests", st.Edges)
	}
	// Past the ring's 15 minutes, the edge is gone.
	st = r.Stats(Query{Window: time.Minute}, now.Add(20*time.Minute))
	if len(st.Edges) != 0 {
		t.Errorf("after 20 minutes: got %+v, want no edges", st.Edges)
	}
}

func TestRingServiceFilterAndTopology(t *testing.T) {
	r := NewRing(RingConfig{})
	feed(r, 5)
	r.Add(&Summary{Instance: "gw-1", Service: "gw", IntervalMS: 5000, Entries: []Entry{entry(Outbound, "gw", "web", "", "", 5, 0)}}, base.Add(15*time.Second))
	now := base.Add(28 * time.Second)
	st := r.Stats(Query{Window: time.Minute, Service: "web"}, now)
	if len(st.Services) != 0 {
		t.Errorf("service=web: got services %+v, want none (web's proxies reported no inbound traffic)", st.Services)
	}
	if len(st.Edges) != 2 {
		t.Errorf("service=web: got %d edges, want web->api and gw->web: %+v", len(st.Edges), st.Edges)
	}
	st = r.Stats(Query{Window: time.Minute, Service: "gw"}, now)
	if len(st.Edges) != 1 || st.Edges[0].Source != "gw" {
		t.Errorf("service=gw: got %+v, want gw->web", st.Edges)
	}
	top := r.Topology(Query{Window: time.Minute}, now, []string{"idle", "web"})
	var names []string
	for _, n := range top.Nodes {
		names = append(names, n.Name)
	}
	if got, want := strings.Join(names, ","), "api,gw,idle,web"; got != want {
		t.Errorf("topology nodes: got %s, want %s", got, want)
	}
	if len(top.Edges) != 2 {
		t.Errorf("topology edges: got %d, want 2", len(top.Edges))
	}
}

// A full slot folds new keys into their service's "*" key: memory stays
// bounded whatever the proxies send.
func TestRingMaxKeys(t *testing.T) {
	r := NewRing(RingConfig{MaxKeys: 3})
	s := &Summary{Instance: "web-1", Service: "web", IntervalMS: 5000}
	for i := range 10 {
		s.Entries = append(s.Entries, entry(Outbound, "web", fmt.Sprintf("s%d", i), "", "", 1, 0))
	}
	r.Add(s, base.Add(5*time.Second))
	r.Add(s, base.Add(10*time.Second))
	st := r.Stats(Query{Window: time.Minute}, base.Add(13*time.Second))
	if len(st.Edges) != 4 {
		t.Fatalf("got %d edges, want 3 kept and web->*: %+v", len(st.Edges), st.Edges)
	}
	if e := st.Edges[0]; e.Destination != Other || e.Requests != 7 {
		t.Errorf("busiest edge: got %s->%s with %d requests, want web->* with 7", e.Source, e.Destination, e.Requests)
	}
	if got := r.Folded(); got != 14 {
		t.Errorf("folded: got %d, want 14", got)
	}
}

func TestParseWindow(t *testing.T) {
	for _, ok := range []string{"1m", "5m", "15m", "90s"} {
		if _, err := ParseWindow(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "30s", "16m", "1h", "abc", "-1m"} {
		if _, err := ParseWindow(bad); err == nil {
			t.Errorf("%q: got no error", bad)
		}
	}
}

func TestQuantile(t *testing.T) {
	var b [NumBuckets]uint64
	if got := Quantile(&b, 0.99); got != 0 {
		t.Errorf("empty: got %v, want 0", got)
	}
	b[0], b[5] = 50, 50 // 50 under 0.5 ms, 50 in 10-25 ms
	for _, tt := range []struct{ q, want float64 }{{0.5, 0.0005}, {0.9, 0.022}, {0.99, 0.0247}} {
		if got := Quantile(&b, tt.q); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("q%v: got %v, want %v", tt.q, got, tt.want)
		}
	}
	b = [NumBuckets]uint64{}
	b[NumBuckets-1] = 1
	if got := Quantile(&b, 0.5); got != 30 {
		t.Errorf("open bucket: got %v, want its lower bound 30", got)
	}
}

// BenchmarkRingMemory1000Proxies measures the server's memory for the
// summaries of 1,000 proxies (100 services of 10 instances, each calling
// 3 others over 2 versions and called by 3) over the whole 15 minutes,
// reported as heap-bytes.
func BenchmarkRingMemory1000Proxies(b *testing.B) {
	const services, instances = 100, 10
	var sums []*Summary
	for s := range services {
		own := fmt.Sprintf("svc-%03d", s)
		for i := range instances {
			sum := &Summary{Instance: fmt.Sprintf("%s-%d", own, i), Service: own, IntervalMS: 5000}
			for d := 1; d <= 3; d++ {
				peer := fmt.Sprintf("svc-%03d", (s+d)%services)
				for _, v := range []string{"v1", "v2"} {
					sum.Entries = append(sum.Entries, entry(Outbound, own, peer, "default", v, 100, 1))
				}
				from := fmt.Sprintf("svc-%03d", (s+services-d)%services)
				sum.Entries = append(sum.Entries, entry(Inbound, from, own, "", []string{"v1", "v2"}[i%2], 100, 1))
			}
			sums = append(sums, sum)
		}
	}
	enc, _ := sums[0].Encode()
	b.ReportMetric(float64(len(enc)), "summary-bytes")
	slots := int(Keep / DefaultInterval)
	var kept *Ring
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r := NewRing(RingConfig{})
		for k := 1; k <= slots; k++ {
			at := base.Add(time.Duration(k) * DefaultInterval)
			for _, s := range sums {
				r.Add(s, at)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc), "heap-bytes")
		kept = r
	}
	st := kept.Stats(Query{Window: 15 * time.Minute}, base.Add(time.Duration(slots)*DefaultInterval+3*time.Second))
	if len(st.Edges) != services*3 {
		b.Fatalf("got %d edges, want %d", len(st.Edges), services*3)
	}
}

// One service's proxies churning made-up keys (routes, versions, peers)
// fill only that service's share of a slot: another service's keys keep
// their own figures, version by version (a canary is judged by them).
func TestRingOneServiceCannotCrowdOutAnother(t *testing.T) {
	r := NewRing(RingConfig{})
	for k := 1; k <= 4; k++ {
		at := base.Add(time.Duration(k)*5*time.Second + 10*time.Millisecond)
		// The flood comes first in each slot: 30 summaries of 200 new
		// keys each, more than the slot holds.
		for n := range 30 {
			s := &Summary{Instance: "evil-1", Service: "evil", IntervalMS: 5000}
			for i := range 200 {
				s.Entries = append(s.Entries, entry(Outbound, "evil", "api", fmt.Sprintf("r%d-%d-%d", k, n, i), "v1", 1, 0))
			}
			r.Add(s, at)
		}
		r.Add(&Summary{Instance: "web-2", Service: "web", IntervalMS: 5000, Entries: []Entry{
			entry(Inbound, "api", "web", "", "v2", 10, 0),
		}}, at)
	}
	st := r.Stats(Query{Window: time.Minute, Service: "web"}, base.Add(30*time.Second))
	var got []string
	for _, s := range st.Services {
		for _, v := range s.Versions {
			got = append(got, fmt.Sprintf("%s/%s:%d", s.Name, v.Version, v.Requests))
		}
	}
	if len(got) != 1 || !strings.HasPrefix(got[0], "web/v2:") || strings.HasSuffix(got[0], ":0") {
		t.Errorf("web's versions: %v; want web/v2 with its requests", got)
	}
	if r.Folded() == 0 {
		t.Error("nothing of evil's was folded")
	}
}
