package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/stats"
	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

func TestDecideCanary(t *testing.T) {
	p := &v1.CanaryPolicy{Version: "v2", Steps: []int{10, 50, 100}, Interval: "1m", MinSuccessRate: 99, MaxP99: "500ms", MinRequests: 50}
	rate := func(f float64) *float64 { return &f }
	now := time.Date(2026, 12, 7, 5, 0, 0, 0, time.UTC)
	own := func(t v1.Traffic) canaryFigures { return canaryFigures{Own: t} }
	good := v1.Traffic{Requests: 500, SuccessRate: rate(1), P99Ms: 20}
	for _, tc := range []struct {
		name    string
		step    int
		elapsed time.Duration
		f       canaryFigures
		action  string
		reason  string
	}{
		{"no requests", 0, 90 * time.Second, canaryFigures{}, canaryWait, "0 requests to v2, 50 needed"},
		{"not enough requests", 0, 90 * time.Second, own(v1.Traffic{Requests: 49, SuccessRate: rate(0), P99Ms: 9000}), canaryWait, "49 requests to v2, 50 needed"},
		{"success below", 0, time.Second, own(v1.Traffic{Requests: 50, SuccessRate: rate(0.98), P99Ms: 10}), canaryRollback, "success rate 98.00 % is below 99 %"},
		{"half failing", 1, 2 * time.Minute, own(v1.Traffic{Requests: 400, SuccessRate: rate(0.5), P99Ms: 10}), canaryRollback, "success rate 50.00 %"},
		{"p99 above", 0, 2 * time.Minute, own(v1.Traffic{Requests: 50, SuccessRate: rate(1), P99Ms: 500.1}), canaryRollback, "p99 500.1 ms is above 500ms"},
		{"good within the interval", 0, 59 * time.Second, own(v1.Traffic{Requests: 500, SuccessRate: rate(0.99), P99Ms: 500}), canaryWait, "figures hold; the step has run 59s of 1m"},
		{"all good: next step", 0, time.Minute, own(v1.Traffic{Requests: 500, SuccessRate: rate(0.995), P99Ms: 20}), canaryNext, "figures held for 1m at 10 %"},
		{"all good at the middle step", 1, time.Minute, own(good), canaryNext, "at 50 %"},
		{"last step: promoted", 2, time.Minute, own(good), canaryPromote, "figures held for 1m at 100 %"},

		// The callers' side: what never reached v2 counts against it.
		{"callers see 503 for v2, v2 sees nothing", 0, time.Second, canaryFigures{Callers: 50, CallersFailed: 50, Offered: 500}, canaryRollback,
			"callers' success rate 0.00 % over 50 requests to v2 is below 99 % (50 failed"},
		{"callers see failures v2's own figures miss", 0, 30 * time.Second, canaryFigures{Own: good, Callers: 600, CallersFailed: 100, Offered: 6000}, canaryRollback,
			"callers' success rate 83.33 % over 600 requests"},
		{"too few callers' requests to judge", 0, 30 * time.Second, canaryFigures{Callers: 49, CallersFailed: 49, Offered: 490}, canaryWait, "0 requests to v2, 50 needed"},
		{"callers and v2 agree: next", 0, time.Minute, canaryFigures{Own: good, Callers: 500, CallersFailed: 5, Offered: 5000}, canaryNext, "figures held"},
		{"both fail: v2's own figures first", 0, time.Second, canaryFigures{Own: v1.Traffic{Requests: 50, SuccessRate: rate(0.5), P99Ms: 10}, Callers: 50, CallersFailed: 25}, canaryRollback, "success rate 50.00 % is below 99 %"},
		{"v2 slow, callers fail: v2's own figures first", 0, time.Second, canaryFigures{Own: v1.Traffic{Requests: 50, SuccessRate: rate(1), P99Ms: 900}, Callers: 50, CallersFailed: 25}, canaryRollback, "p99 900.0 ms"},

		// A step that cannot be judged does not wait forever.
		{"no healthy instance, within the bound", 0, 5 * time.Minute, canaryFigures{NoneHealthy: 119 * time.Second}, canaryWait, "v2 has had no healthy instance for 1m59s (rolled back at 2m0s)"},
		{"no healthy instance for two intervals", 0, 5 * time.Minute, canaryFigures{NoneHealthy: 2 * time.Minute}, canaryRollback, "v2 has had no healthy instance for 2m0s (2 intervals)"},
		{"no healthy instance and no traffic", 1, 2 * time.Minute, canaryFigures{NoneHealthy: 2 * time.Minute}, canaryRollback, "no healthy instance"},
		{"traffic to the rule, little to v2, within the bound", 0, 119 * time.Second, canaryFigures{Own: v1.Traffic{Requests: 10, SuccessRate: rate(1)}, Callers: 10, Offered: 100}, canaryWait, "10 requests to v2, 50 needed"},
		{"traffic to the rule, little to v2, two intervals", 0, 2 * time.Minute, canaryFigures{Own: v1.Traffic{Requests: 10, SuccessRate: rate(1)}, Callers: 10, Offered: 100}, canaryRollback,
			"10 requests to v2 (its callers counted 10) while callers sent the rule 100, 50 needed to judge, after 2 intervals"},
		{"v2 reports nothing, callers do", 0, 2 * time.Minute, canaryFigures{Callers: 60, Offered: 600}, canaryRollback, "0 requests to v2 (its callers counted 60)"},
		{"no traffic at all: waits", 0, time.Hour, canaryFigures{}, canaryWait, "0 requests to v2, 50 needed"},
		{"little traffic at all: waits", 0, time.Hour, canaryFigures{Own: v1.Traffic{Requests: 4, SuccessRate: rate(1)}, Callers: 4, Offered: 49}, canaryWait, "4 requests to v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := decideCanary(p, tc.step, tc.elapsed, tc.f, now)
			if d.Action != tc.action || !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("got %s (%s), want %s (%s)", d.Action, d.Reason, tc.action, tc.reason)
			}
			o := tc.f.Own
			if d.Requests != o.Requests || d.P99Ms != o.P99Ms || !d.At.Equal(now) || d.CallerRequests != tc.f.Callers {
				t.Errorf("figures recorded %+v, from %+v", d, tc.f)
			}
			if o.SuccessRate != nil && (d.SuccessRate == nil || *d.SuccessRate != *o.SuccessRate*100) {
				t.Errorf("success rate recorded %v, want %v %%", d.SuccessRate, *o.SuccessRate*100)
			}
			if c := tc.f.Callers; c > 0 && (d.CallerSuccessRate == nil || *d.CallerSuccessRate != 100*float64(c-tc.f.CallersFailed)/float64(c)) {
				t.Errorf("callers' success rate recorded %v, from %d of %d failed", d.CallerSuccessRate, tc.f.CallersFailed, c)
			}
		})
	}
}

func TestCanaryEventsBounded(t *testing.T) {
	var st v1.CanaryStatus
	now := time.Now()
	for i := range maxCanaryEvents + 7 {
		addEvent(&st, now, strings.Repeat("x", i))
	}
	if len(st.Events) != maxCanaryEvents || len(st.Events[0].Message) != 7 {
		t.Errorf("%d events, the first %q; want the last %d", len(st.Events), st.Events[0].Message, maxCanaryEvents)
	}
}

// TestCanaryIntervalFloor checks that apply refuses a canary whose
// interval is shorter than two of the server's stats intervals.
func TestCanaryIntervalFloor(t *testing.T) {
	s, err := New(Config{DataDir: t.TempDir(), StatsInterval: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	route := func(interval string) v1.Resource {
		return v1.Resource{Kind: v1.KindRoute, Name: "web", Route: &v1.RouteSpec{Rules: []v1.RouteRule{{
			Targets: []v1.RouteTarget{{Version: "v1", Weight: 100}, {Version: "v2"}},
			Canary:  &v1.CanaryPolicy{Version: "v2", Steps: []int{100}, Interval: interval, MinSuccessRate: 99, MaxP99: "1s"},
		}}}}
	}
	errs := s.checkCanaryIntervals([]v1.Resource{route("10s"), route("9s")})
	if len(errs) != 1 || !strings.Contains(errs[0], `resource 2 (Route "web"): spec.rules[0].canary.interval: 9s is shorter than twice the server's stats interval (5s): want at least 10s`) {
		t.Errorf("got %q, want the 9s canary refused", errs)
	}
}

// TestCanaryLockOneHolder checks, on a real etcd, that one server at a
// time holds the canary lock, and that a holder whose lease ended can no
// longer write: its commit conflicts, even before it notices.
func TestCanaryLockOneHolder(t *testing.T) {
	ctx := t.Context()
	emb, err := store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer emb.Close()
	st, err := store.NewEtcd(ctx, emb.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	log := slog.New(slog.DiscardHandler)
	a := &Server{log: log, store: st, cfg: Config{LeaseTTL: 5 * time.Second}}
	b := &Server{log: log, store: st, cfg: Config{LeaseTTL: 5 * time.Second}}

	la, err := a.takeCanaryLock(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.takeCanaryLock(ctx, "b"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a second server took the held lock: %v", err)
	}
	if err := la.commit(ctx, store.Op{Key: canaryStatusKey("web"), Value: []byte(`{"route":"web"}`)}); err != nil {
		t.Fatalf("the holder cannot write: %v", err)
	}
	if err := la.commit(ctx, store.Op{Key: canaryStatusKey("web"), Value: []byte(`{"route":"web","step":1}`)}); err != nil {
		t.Fatalf("the holder cannot write twice: %v", err)
	}
	// a's lease ends (a stalled server, cut from etcd); b takes over.
	if err := st.Revoke(ctx, la.lease); err != nil {
		t.Fatal(err)
	}
	lb, err := b.takeCanaryLock(ctx, "b")
	if err != nil {
		t.Fatalf("the lock is free, yet: %v", err)
	}
	if err := la.commit(ctx, store.Op{Key: canaryStatusKey("web"), Value: []byte(`{"route":"web","step":2}`)}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("the old holder wrote after losing the lock: %v", err)
	}
	if err := la.refresh(ctx); err == nil {
		t.Error("the old holder still believes it holds the lock")
	}
	kv, err := st.Get(ctx, canaryStatusKey("web"))
	if err != nil || string(kv.Value) != `{"route":"web","step":1}` {
		t.Errorf("status %q, %v; want the holder's last write", kv.Value, err)
	}
	if err := lb.commit(ctx, store.Op{Key: canaryStatusKey("web"), Delete: true}); err != nil {
		t.Fatalf("the new holder cannot write: %v", err)
	}
}

// failStatusOnce fails, once armed, the first commit that writes a
// canary status, writing nothing: the leader losing its lock (or
// stopping) at that moment.
type failStatusOnce struct {
	store.Store
	armed atomic.Bool
}

func (f *failStatusOnce) Commit(ctx context.Context, ops []store.Op) error {
	for _, op := range ops {
		if strings.HasPrefix(op.Key, keyCanaryStatus) && f.armed.CompareAndSwap(true, false) {
			return errors.New("lock lost (test)")
		}
	}
	return f.Store.Commit(ctx, ops)
}

// canaryRig drives one Route's canary ("web", rule "release", v1 and v2,
// steps 10, 50, 100) pass by pass, on a real etcd, as the leader does.
type canaryRig struct {
	t    *testing.T
	raw  store.Store
	ring *stats.Ring
	s    *Server
	l    *canaryLock
	memo *canaryMemo
}

// newCanaryRig applies the Route (its weights at v1 100, v2 0), with a
// canary of interval and minRequests 10, on st (nil: a plain etcd).
func newCanaryRig(t *testing.T, interval string, st func(store.Store) store.Store) *canaryRig {
	ctx := t.Context()
	emb, err := store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	raw, err := store.NewEtcd(ctx, emb.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	wrapped := store.Store(raw)
	if st != nil {
		wrapped = st(raw)
	}
	log := slog.New(slog.DiscardHandler)
	ring := stats.NewRing(stats.RingConfig{Interval: time.Second})
	s := &Server{log: log, store: wrapped, stats: ring, state: newState(log), cfg: Config{LeaseTTL: 5 * time.Second}}
	route := v1.Resource{Kind: v1.KindRoute, Name: "web", Route: &v1.RouteSpec{Rules: []v1.RouteRule{{
		Name:    "release",
		Targets: []v1.RouteTarget{{Version: "v1", Weight: 100}, {Version: "v2", Weight: 0}},
		Canary:  &v1.CanaryPolicy{Version: "v2", Steps: []int{10, 50, 100}, Interval: interval, MinSuccessRate: 99, MaxP99: "500ms", MinRequests: 10},
	}}}}
	if err := route.Validate(); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(route)
	if err := raw.Put(ctx, resourceKey(v1.KindRoute, "web"), b, 0); err != nil {
		t.Fatal(err)
	}
	l, err := s.takeCanaryLock(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	return &canaryRig{t: t, raw: raw, ring: ring, s: s, l: l, memo: newCanaryMemo()}
}

// pass is canaryPass for the one Route.
func (r *canaryRig) pass() error {
	ctx := r.t.Context()
	var ss storedStatus
	if kv, err := r.raw.Get(ctx, canaryStatusKey("web")); err == nil {
		ss.st, ss.rev = &v1.CanaryStatus{}, kv.Rev
		if err := json.Unmarshal(kv.Value, ss.st); err != nil {
			r.t.Fatal(err)
		}
	}
	return r.s.driveCanary(ctx, r.l, "web", ss, r.memo)
}

// weight is v2's weight in the stored Route.
func (r *canaryRig) weight() int {
	kv, err := r.raw.Get(r.t.Context(), resourceKey(v1.KindRoute, "web"))
	if err != nil {
		r.t.Fatal(err)
	}
	var res v1.Resource
	if err := json.Unmarshal(kv.Value, &res); err != nil {
		r.t.Fatal(err)
	}
	return res.Route.Rules[0].Targets[1].Weight
}

func (r *canaryRig) status() v1.CanaryStatus {
	var cs v1.CanaryStatus
	kv, err := r.raw.Get(r.t.Context(), canaryStatusKey("web"))
	if err != nil {
		r.t.Fatal(err)
	}
	if err := json.Unmarshal(kv.Value, &cs); err != nil {
		r.t.Fatal(err)
	}
	return cs
}

// instances sets web's instances in the server's mirror of the store.
func (r *canaryRig) instances(ins ...v1.Instance) {
	st := r.s.state
	st.mu.Lock()
	defer st.mu.Unlock()
	st.instances["web"] = map[string]v1.Instance{}
	for _, in := range ins {
		in.Service = "web"
		st.instances["web"][in.ID] = in
	}
	st.meshView = nil
}

// summaries files e, from a proxy of service, in each of the last 10
// one-second slots: every window a pass could look at.
func (r *canaryRig) summaries(service string, e stats.Entry) {
	now := time.Now()
	for k := range 10 {
		r.ring.Add(&stats.Summary{Instance: service + "-1", Service: service, IntervalMS: 1000, Entries: []stats.Entry{e}}, now.Add(-time.Duration(k)*time.Second))
	}
}

// A canary whose v2 has no instance at all (or none healthy), and so
// gets no request to judge, rolls back once that has lasted two
// intervals, and not before; the rollback says why.
func TestCanaryWithoutHealthyInstanceRollsBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		v2   []v1.Instance
	}{
		{"no instance of v2", nil},
		{"v2 never healthy", []v1.Instance{{ID: "web-2", Version: "v2", Healthy: false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const interval = 2 * time.Second
			r := newCanaryRig(t, interval.String(), nil)
			r.instances(append([]v1.Instance{{ID: "web-1", Version: "v1", Healthy: true}}, tc.v2...)...)
			if err := r.pass(); err != nil {
				t.Fatal(err)
			}
			if w := r.weight(); w != 10 {
				t.Fatalf("after the start: v2 at %d %%, want 10", w)
			}
			var cs v1.CanaryStatus
			trellistest.Eventually(t, canaryStallIntervals*interval+2*time.Second, "canary rolled back", func() error {
				if err := r.pass(); err != nil {
					return err
				}
				if cs = r.status(); cs.State != v1.CanaryRolledBack {
					return fmt.Errorf("state %s, last %+v", cs.State, cs.Last)
				}
				return nil
			})
			last := cs.Events[len(cs.Events)-1]
			took := last.At.Sub(cs.Events[0].At)
			if took < canaryStallIntervals*interval || took > canaryStallIntervals*interval+time.Second {
				t.Errorf("rolled back %v after the start, want %v (and a pass)", took, canaryStallIntervals*interval)
			}
			if w := r.weight(); w != 0 || !strings.Contains(last.Message, "rolled back at step 1 (10 %): v2 has had no healthy instance for 4s (2 intervals)") {
				t.Errorf("v2 at %d %%, last event %q; want 0 %% and the reason", w, last.Message)
			}
		})
	}
}

// A canary whose callers' proxies answer 503 for v2 (no healthy endpoint:
// v2's own proxies see nothing) rolls back on the callers' figures, at
// once, without waiting for the stall bound.
func TestCanaryCallersSee503RollsBack(t *testing.T) {
	r := newCanaryRig(t, "1m", nil)
	// v2's instance looks healthy to the server, yet callers cannot
	// reach it (another network's gateway down, a stale endpoint).
	r.instances(v1.Instance{ID: "web-1", Version: "v1", Healthy: true}, v1.Instance{ID: "web-2", Version: "v2", Healthy: true})
	if err := r.pass(); err != nil {
		t.Fatal(err)
	}
	caller := func(version string, code int, n uint64) stats.Entry {
		e := stats.Entry{Key: stats.Key{Direction: stats.Outbound, Source: "client", Destination: "web", Route: "release", Version: version}}
		e.Codes[code/100-1], e.Latency[0] = n, n
		return e
	}
	r.summaries("client", caller("v1", 200, 90))
	if err := r.pass(); err != nil {
		t.Fatal(err)
	}
	if cs := r.status(); cs.State != v1.CanaryProgressing {
		t.Fatalf("with v1's traffic alone: state %s (%+v), want progressing", cs.State, cs.Last)
	}
	r.summaries("client", caller("v2", 503, 10))
	if err := r.pass(); err != nil {
		t.Fatal(err)
	}
	cs := r.status()
	if w := r.weight(); w != 0 || cs.State != v1.CanaryRolledBack {
		t.Fatalf("v2 at %d %%, state %s (%+v); want rolled back", w, cs.State, cs.Last)
	}
	if d := cs.Last; d.Requests != 0 || d.CallerRequests != 10 || d.CallerSuccessRate == nil || *d.CallerSuccessRate != 0 ||
		!strings.Contains(d.Reason, "callers' success rate 0.00 % over 10 requests to v2 is below 99 %") {
		t.Errorf("last decision %+v; want the callers' 10 failed requests", d)
	}
}

// A rollback cut short between the Route's weights and the canary's
// status must not leave weights the status does not explain: the next
// pass (on this leader or the next) finishes the rollback, and never
// takes the leader's own write for a person's apply that starts the
// canary again at its first step.
func TestCanaryWeightsAndStatusWrittenTogether(t *testing.T) {
	var st *failStatusOnce
	r := newCanaryRig(t, "2s", func(raw store.Store) store.Store {
		st = &failStatusOnce{Store: raw}
		return st
	})
	r.instances(v1.Instance{ID: "web-1", Version: "v1", Healthy: true}, v1.Instance{ID: "web-2", Version: "v2", Healthy: true})
	pass, weight, status := r.pass, r.weight, r.status
	// v2 fails every request, in every slot a pass could look at.
	failing := func() {
		r.summaries("web", stats.Entry{
			Key:    stats.Key{Direction: stats.Inbound, Destination: "web", Version: "v2"},
			Counts: stats.Counts{Codes: [5]uint64{4: 100}, Latency: [stats.NumBuckets]uint64{0: 100}},
		})
	}

	if err := pass(); err != nil {
		t.Fatal(err)
	}
	if w, cs := weight(), status(); w != 10 || cs.State != v1.CanaryProgressing {
		t.Fatalf("after the start: v2 at %d %%, state %s; want 10 %%, progressing", w, cs.State)
	}
	failing()
	st.armed.Store(true)
	if err := pass(); err == nil {
		t.Fatal("the pass whose status write failed reported no error")
	}
	failing()
	if err := pass(); err != nil {
		t.Fatal(err)
	}
	cs := status()
	if w := weight(); w != 0 || cs.State != v1.CanaryRolledBack {
		t.Errorf("after the interrupted rollback and one more pass: v2 at %d %%, state %s; want 0 %%, %s (events %v)", w, cs.State, v1.CanaryRolledBack, cs.Events)
	}
	starts := 0
	for _, e := range cs.Events {
		if strings.HasPrefix(e.Message, "started") {
			starts++
		}
	}
	if starts != 1 {
		t.Errorf("the canary started %d times, want once: %v", starts, cs.Events)
	}
	// And the leader's own write is not taken for an apply afterwards.
	if err := pass(); err != nil {
		t.Fatal(err)
	}
	if w, cs := weight(), status(); w != 0 || cs.State != v1.CanaryRolledBack {
		t.Errorf("one pass later: v2 at %d %%, state %s", w, cs.State)
	}
}
