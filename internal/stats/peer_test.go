package stats

import (
	"fmt"
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
