package control

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/stats"
	"github.com/trellis-mesh/trellis/internal/store"
)

func TestDecideCanary(t *testing.T) {
	p := &v1.CanaryPolicy{Version: "v2", Steps: []int{10, 50, 100}, Interval: "1m", MinSuccessRate: 99, MaxP99: "500ms", MinRequests: 50}
	rate := func(f float64) *float64 { return &f }
	now := time.Date(2026, 12, 7, 5, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		step    int
		elapsed time.Duration
		t       v1.Traffic
		action  string
		reason  string
	}{
		{"no requests", 0, 2 * time.Minute, v1.Traffic{}, canaryWait, "0 requests to v2, 50 needed"},
		{"not enough requests", 0, 2 * time.Minute, v1.Traffic{Requests: 49, SuccessRate: rate(0), P99Ms: 9000}, canaryWait, "49 requests to v2, 50 needed"},
		{"success below", 0, time.Second, v1.Traffic{Requests: 50, SuccessRate: rate(0.98), P99Ms: 10}, canaryRollback, "success rate 98.00 % is below 99 %"},
		{"half failing", 1, 2 * time.Minute, v1.Traffic{Requests: 400, SuccessRate: rate(0.5), P99Ms: 10}, canaryRollback, "success rate 50.00 %"},
		{"p99 above", 0, 2 * time.Minute, v1.Traffic{Requests: 50, SuccessRate: rate(1), P99Ms: 500.1}, canaryRollback, "p99 500.1 ms is above 500ms"},
		{"good within the interval", 0, 59 * time.Second, v1.Traffic{Requests: 500, SuccessRate: rate(0.99), P99Ms: 500}, canaryWait, "figures hold; the step has run 59s of 1m"},
		{"all good: next step", 0, time.Minute, v1.Traffic{Requests: 500, SuccessRate: rate(0.995), P99Ms: 20}, canaryNext, "figures held for 1m at 10 %"},
		{"all good at the middle step", 1, time.Minute, v1.Traffic{Requests: 500, SuccessRate: rate(1), P99Ms: 20}, canaryNext, "at 50 %"},
		{"last step: promoted", 2, time.Minute, v1.Traffic{Requests: 500, SuccessRate: rate(1), P99Ms: 20}, canaryPromote, "figures held for 1m at 100 %"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := decideCanary(p, tc.step, tc.elapsed, tc.t, now)
			if d.Action != tc.action || !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("got %s (%s), want %s (%s)", d.Action, d.Reason, tc.action, tc.reason)
			}
			if d.Requests != tc.t.Requests || d.P99Ms != tc.t.P99Ms || !d.At.Equal(now) {
				t.Errorf("figures recorded %+v, from %+v", d, tc.t)
			}
			if tc.t.SuccessRate != nil && (d.SuccessRate == nil || *d.SuccessRate != *tc.t.SuccessRate*100) {
				t.Errorf("success rate recorded %v, want %v %%", d.SuccessRate, *tc.t.SuccessRate*100)
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

// A rollback cut short between the Route's weights and the canary's
// status must not leave weights the status does not explain: the next
// pass (on this leader or the next) finishes the rollback, and never
// takes the leader's own write for a person's apply that starts the
// canary again at its first step.
func TestCanaryWeightsAndStatusWrittenTogether(t *testing.T) {
	ctx := t.Context()
	emb, err := store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer emb.Close()
	raw, err := store.NewEtcd(ctx, emb.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	st := &failStatusOnce{Store: raw}
	ring := stats.NewRing(stats.RingConfig{Interval: time.Second})
	s := &Server{log: slog.New(slog.DiscardHandler), store: st, stats: ring, cfg: Config{LeaseTTL: 5 * time.Second}}
	route := v1.Resource{Kind: v1.KindRoute, Name: "web", Route: &v1.RouteSpec{Rules: []v1.RouteRule{{
		Targets: []v1.RouteTarget{{Version: "v1", Weight: 100}, {Version: "v2", Weight: 0}},
		Canary:  &v1.CanaryPolicy{Version: "v2", Steps: []int{10, 50, 100}, Interval: "2s", MinSuccessRate: 99, MaxP99: "500ms", MinRequests: 10},
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
	wrote := map[string]time.Time{}
	// pass is canaryPass for the one Route.
	pass := func() error {
		var ss storedStatus
		if kv, err := raw.Get(ctx, canaryStatusKey("web")); err == nil {
			ss.st, ss.rev = &v1.CanaryStatus{}, kv.Rev
			if err := json.Unmarshal(kv.Value, ss.st); err != nil {
				t.Fatal(err)
			}
		}
		return s.driveCanary(ctx, l, "web", ss, wrote)
	}
	weight := func() int {
		kv, err := raw.Get(ctx, resourceKey(v1.KindRoute, "web"))
		if err != nil {
			t.Fatal(err)
		}
		var r v1.Resource
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			t.Fatal(err)
		}
		return r.Route.Rules[0].Targets[1].Weight
	}
	status := func() v1.CanaryStatus {
		var cs v1.CanaryStatus
		kv, err := raw.Get(ctx, canaryStatusKey("web"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(kv.Value, &cs); err != nil {
			t.Fatal(err)
		}
		return cs
	}
	// v2 fails every request, in every slot a pass could look at.
	failing := func() {
		now := time.Now()
		for k := range 10 {
			ring.Add(&stats.Summary{Instance: "web-2", Service: "web", IntervalMS: 1000, Entries: []stats.Entry{{
				Key:    stats.Key{Direction: stats.Inbound, Destination: "web", Version: "v2"},
				Counts: stats.Counts{Codes: [5]uint64{4: 100}, Latency: [stats.NumBuckets]uint64{0: 100}},
			}}}, now.Add(-time.Duration(k)*time.Second))
		}
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
