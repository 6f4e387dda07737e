package stats

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// split feeds the same load as feed, but the web proxies' summaries to a
// and the api proxy's to b, as two servers would receive them, and after
// each interval each exports what changed to the other, which merges it
// twice (a duplicate delivery).
func split(t *testing.T, a, b *Ring, n int) {
	t.Helper()
	var curA, curB Cursor
	for k := 1; k <= n; k++ {
		at := base.Add(time.Duration(k)*5*time.Second + 10*time.Millisecond)
		ok1, f1, ok2 := uint64(6), uint64(1), uint64(3)
		if k == 1 {
			ok1, f1, ok2 = 3, 0, 0
		}
		for i := 1; i <= 2; i++ {
			a.Add(&Summary{Instance: fmt.Sprintf("web-%d", i), Service: "web", IntervalMS: 5000, Entries: []Entry{
				entry(Outbound, "web", "api", "default", "v1", ok1, f1),
				entry(Outbound, "web", "api", "default", "v2", ok2, 0),
			}}, at)
		}
		b.Add(&Summary{Instance: "api-1", Service: "api", IntervalMS: 5000, Entries: []Entry{
			entry(Inbound, "web", "api", "", "v1", 2*ok1, 2*f1),
			entry(Inbound, "web", "api", "", "v2", 2*ok2, 0),
		}}, at)
		// The push a quarter interval later, through the encoding.
		pushAt := at.Add(1250 * time.Millisecond)
		var slots []PushSlot
		slots, curA = a.Export(curA, pushAt)
		deliver(t, b, &Push{Origin: "server-a", IntervalMS: 5000, Slots: slots}, pushAt)
		slots, curB = b.Export(curB, pushAt)
		deliver(t, a, &Push{Origin: "server-b", IntervalMS: 5000, Slots: slots}, pushAt)
	}
}

func deliver(t *testing.T, to *Ring, p *Push, at time.Time) {
	t.Helper()
	enc, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		got, err := DecodePush(enc)
		if err != nil {
			t.Fatalf("decode an exported push: %v", err)
		}
		if skipped := to.Merge(got, at); skipped != 0 {
			t.Fatalf("merge: %d slots skipped, want none", skipped)
		}
	}
}

// Two servers that share their slots each answer for the whole mesh, as
// one server that received every summary would (an interval later).
func TestMergeAnswersForTheWholeMesh(t *testing.T) {
	whole, a, b := NewRing(RingConfig{}), NewRing(RingConfig{}), NewRing(RingConfig{})
	feed(whole, 20)
	split(t, a, b, 20)
	now := base.Add(100*time.Second + 3*time.Second)
	want := whole.Stats(Query{Window: time.Minute}, now)
	for name, r := range map[string]*Ring{"a": a, "b": b} {
		got := r.Stats(Query{Window: time.Minute}, now.Add(5*time.Second))
		if len(got.Edges) != 1 || len(got.Services) != 1 {
			t.Fatalf("server %s: got %d edges and %d services, want 1 and 1: %+v", name, len(got.Edges), len(got.Services), got)
		}
		ge, we := got.Edges[0], want.Edges[0]
		if !near(ge.RequestsPerSecond, we.RequestsPerSecond) || rate(ge.SuccessRate) != rate(we.SuccessRate) || !near(ge.P99Ms, we.P99Ms) {
			t.Errorf("server %s: edge got %v/s, success %s, p99 %v; want %v/s, %s, %v", name,
				ge.RequestsPerSecond, rate(ge.SuccessRate), ge.P99Ms, we.RequestsPerSecond, rate(we.SuccessRate), we.P99Ms)
		}
		gs, ws := got.Services[0], want.Services[0]
		if !near(gs.RequestsPerSecond, ws.RequestsPerSecond) || rate(gs.SuccessRate) != rate(ws.SuccessRate) {
			t.Errorf("server %s: service got %v/s, success %s; want %v/s, %s", name,
				gs.RequestsPerSecond, rate(gs.SuccessRate), ws.RequestsPerSecond, rate(ws.SuccessRate))
		}
	}
}

// A server exports only its own proxies' summaries: what came from a
// peer is never sent on, so a third server does not count it twice.
func TestExportLeavesOutPeers(t *testing.T) {
	a, b := NewRing(RingConfig{}), NewRing(RingConfig{})
	split(t, a, b, 3)
	at := base.Add(16 * time.Second)
	for name, r := range map[string]*Ring{"a": a, "b": b} {
		slots, _ := r.Export(Cursor{}, at)
		if len(slots) != 3 {
			t.Errorf("server %s: exported %d slots, want its own 3", name, len(slots))
		}
		for _, s := range slots {
			for _, e := range s.Entries {
				own := name == "a" && e.Direction == Outbound || name == "b" && e.Direction == Inbound
				if !own {
					t.Errorf("server %s: exported %s entry %s->%s, a peer's", name, e.Direction, e.Source, e.Destination)
				}
			}
		}
	}
}

// An export with the cursor of the last one holds only the slots that
// changed since; a slot sent again replaces the peer's copy, not adds to
// it.
func TestExportCursorAndReplace(t *testing.T) {
	a, b := NewRing(RingConfig{}), NewRing(RingConfig{})
	at := base.Add(5*time.Second + 10*time.Millisecond)
	web := func(n uint64) *Summary {
		return &Summary{Instance: "web-1", Service: "web", IntervalMS: 5000, Entries: []Entry{entry(Outbound, "web", "api", "", "", n, 0)}}
	}
	a.Add(web(10), at)
	slots, cur := a.Export(Cursor{}, at)
	if len(slots) != 1 {
		t.Fatalf("first export: %d slots, want 1", len(slots))
	}
	b.Merge(&Push{Origin: "a", IntervalMS: 5000, Slots: slots}, at)
	if again, _ := a.Export(cur, at); len(again) != 0 {
		t.Errorf("export with the last cursor: %d slots, want none", len(again))
	}
	// More in the same slot: the slot is sent again, whole.
	a.Add(web(5), at.Add(time.Second))
	slots, _ = a.Export(cur, at)
	if len(slots) != 1 || slots[0].Entries[0].Requests() != 15 {
		t.Fatalf("export after a change: %+v, want the slot with 15 requests", slots)
	}
	b.Merge(&Push{Origin: "a", IntervalMS: 5000, Slots: slots}, at)
	b.Merge(&Push{Origin: "a", IntervalMS: 5000, Slots: slots}, at)
	// Then the next slot, so that the first one's count shows.
	a.Add(web(15), at.Add(5*time.Second))
	slots, _ = a.Export(cur, at.Add(5*time.Second))
	b.Merge(&Push{Origin: "a", IntervalMS: 5000, Slots: slots}, at.Add(5*time.Second))
	a.Add(web(15), at.Add(10*time.Second))
	slots, _ = a.Export(cur, at.Add(10*time.Second))
	b.Merge(&Push{Origin: "a", IntervalMS: 5000, Slots: slots}, at.Add(10*time.Second))
	st := b.Stats(Query{Window: time.Minute}, at.Add(18*time.Second))
	// Slot 1 is the edge's first (not counted); slot 2 holds 15, slot 3
	// 15: 3/s whatever the duplicates.
	if len(st.Edges) != 1 || st.Edges[0].Requests != 30 || !near(st.Edges[0].RequestsPerSecond, 3) {
		t.Errorf("after duplicates: got %+v, want 30 requests at 3/s", st.Edges)
	}
}

// Slots from another interval width, far in the future (a clock far off)
// or older than the ring are skipped, never filed; a full slot takes no
// new origin.
func TestMergeSkips(t *testing.T) {
	r := NewRing(RingConfig{})
	now := base.Add(time.Hour)
	cur := now.UnixNano() / int64(5*time.Second)
	slot := func(idx int64) PushSlot {
		return PushSlot{Slot: idx, Entries: []Entry{entry(Outbound, "web", "api", "", "", 5, 0)}}
	}
	for _, tc := range []struct {
		name string
		p    Push
	}{
		{"other interval", Push{Origin: "a", IntervalMS: 1000, Slots: []PushSlot{slot(cur)}}},
		{"far future", Push{Origin: "a", IntervalMS: 5000, Slots: []PushSlot{slot(cur + 100)}}},
		{"too old", Push{Origin: "a", IntervalMS: 5000, Slots: []PushSlot{slot(cur - 180)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := r.Merge(&tc.p, now); got != 1 {
				t.Errorf("skipped %d slots, want 1", got)
			}
		})
	}
	for i := range MaxOrigins {
		r.Merge(&Push{Origin: fmt.Sprintf("s%d", i), IntervalMS: 5000, Slots: []PushSlot{slot(cur)}}, now)
	}
	if got := r.Merge(&Push{Origin: "one-more", IntervalMS: 5000, Slots: []PushSlot{slot(cur)}}, now); got != 1 {
		t.Errorf("origin %d in one slot: skipped %d, want 1", MaxOrigins+1, got)
	}
}

func TestDecodePushRefuses(t *testing.T) {
	ok := `{"direction":"outbound","source":"web","destination":"api","codes":[0,1,0,0,0],"latency":[1]}`
	for _, tc := range []struct{ name, in, want string }{
		{"origin", `{"origin":"A B","intervalMs":5000,"slots":[]}`, "origin"},
		{"interval", `{"origin":"a","intervalMs":10,"slots":[]}`, "intervalMs"},
		{"unknown field", `{"origin":"a","intervalMs":5000,"slots":[],"x":1}`, "unknown field"},
		{"slot twice", `{"origin":"a","intervalMs":5000,"slots":[{"slot":5,"entries":[]},{"slot":5,"entries":[]}]}`, "listed twice"},
		{"key twice", `{"origin":"a","intervalMs":5000,"slots":[{"slot":5,"entries":[` + ok + `,` + ok + `]}]}`, "listed twice"},
		{"bad service", `{"origin":"a","intervalMs":5000,"slots":[{"slot":5,"entries":[{"direction":"outbound","source":"NO","destination":"api"}]}]}`, "slots[0].entries[0]"},
		{"bad direction", `{"origin":"a","intervalMs":5000,"slots":[{"slot":5,"entries":[{"direction":"up","source":"a","destination":"b"}]}]}`, "direction"},
		{"trailing", `{"origin":"a","intervalMs":5000,"slots":[]} {}`, "after the push"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodePush([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// The memory of one of three servers that share the summaries of 1,000
// proxies (as BenchmarkRingMemory1000Proxies, the instances spread over
// the servers): its own ring with the two peers' slots merged, and the
// bytes of one push.
func BenchmarkRingMemoryThreeServers(b *testing.B) {
	const services, instances, servers = 100, 10, 3
	sums := make([][]*Summary, servers)
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
			sums[(s*instances+i)%servers] = append(sums[(s*instances+i)%servers], sum)
		}
	}
	// The peers' pushes, made before the measurement: one a slot each.
	slots := int(Keep / DefaultInterval)
	pushes := make([][]*Push, slots+1)
	pushBytes := 0
	for j := 1; j < servers; j++ {
		p, cur := NewRing(RingConfig{}), Cursor{}
		for k := 1; k <= slots; k++ {
			at := base.Add(time.Duration(k) * DefaultInterval)
			for _, s := range sums[j] {
				p.Add(s, at)
			}
			var out []PushSlot
			out, cur = p.Export(cur, at)
			push := &Push{Origin: fmt.Sprintf("s-%d", j), IntervalMS: 5000, Slots: out}
			pushes[k] = append(pushes[k], push)
			if k == slots {
				enc, _ := push.Encode()
				pushBytes = len(enc)
			}
		}
	}
	b.ReportMetric(float64(pushBytes), "push-bytes")
	var kept *Ring
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r := NewRing(RingConfig{})
		for k := 1; k <= slots; k++ {
			at := base.Add(time.Duration(k) * DefaultInterval)
			for _, s := range sums[0] {
				r.Add(s, at)
			}
			for _, p := range pushes[k] {
				r.Merge(p, at)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc), "heap-bytes")
		kept = r
	}
	st := kept.Stats(Query{Window: 15 * time.Minute}, base.Add(time.Duration(slots)*DefaultInterval+8*time.Second))
	if len(st.Edges) != services*3 {
		b.Fatalf("got %d edges, want %d", len(st.Edges), services*3)
	}
}

// Past foldAfter slots, a slot's peer figures are summed into one map
// (one key per key, not per peer), and a push of the slot from a peer
// already summed is ignored: counted once still.
func TestMergeFoldsOldSlots(t *testing.T) {
	r := NewRing(RingConfig{})
	at := base.Add(5*time.Second + 10*time.Millisecond)
	idx := at.UnixNano() / int64(5*time.Second)
	push := func(origin string, slot int64, n uint64) *Push {
		return &Push{Origin: origin, IntervalMS: 5000, Slots: []PushSlot{{Slot: slot, Entries: []Entry{entry(Outbound, "web", "api", "", "", n, 0)}}}}
	}
	// Two peers, five slots of 10 requests each.
	for k := range int64(5) {
		for _, o := range []string{"a", "b"} {
			r.Merge(push(o, idx+k, 10), at.Add(time.Duration(k)*5*time.Second))
		}
	}
	// Slot idx is folded: its peers map is empty, its merged map holds
	// the one key.
	sl := &r.slots[int(idx%int64(len(r.slots)))]
	if len(sl.peers) != 0 || len(sl.merged) != 1 || sl.merged[Key{Direction: Outbound, Source: "web", Destination: "api"}].Requests() != 20 {
		t.Fatalf("folded slot: %d peers, merged %v; want none and one key of 20 requests", len(sl.peers), sl.merged)
	}
	now := at.Add(5 * 5 * time.Second)
	if skipped := r.Merge(push("a", idx, 10), now); skipped != 1 {
		t.Errorf("a push of a folded slot: %d skipped, want 1", skipped)
	}
	// Once slot idx+4 is complete (an interval and the grace after its
	// end): slots idx+1 to idx+4 of 20 each (idx is the first, not
	// counted).
	st := r.Stats(Query{Window: time.Minute}, now.Add(10*time.Second))
	if len(st.Edges) != 1 || st.Edges[0].Requests != 80 {
		t.Errorf("got %+v, want 80 requests", st.Edges)
	}
}
