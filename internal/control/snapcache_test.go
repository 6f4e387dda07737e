package control

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/topology"
	"github.com/trellis-mesh/trellis/internal/xds"
)

func cacheMesh(dbInstances int) *topology.Mesh {
	m := &topology.Mesh{
		TrustDomain: "trellis.local", RootsPEM: "roots", Mesh: &v1.MeshSpec{},
		Services: map[string]*v1.ServiceSpec{"db": {Protocol: "tcp"}, "web": {Protocol: "http"}}, Instances: map[string][]v1.Instance{},
	}
	for i := range dbInstances {
		m.Instances["db"] = append(m.Instances["db"], v1.Instance{ID: "db-" + string(rune('a'+i)), Service: "db", Address: "10.0.0.1", Port: 20000 + i, Healthy: true})
	}
	return m
}

// Streams of one view (upstreams in any order, the default network named
// or not) share one computed and encoded snapshot per mesh generation; a
// new generation is computed once; another view is computed apart; the
// last stream of a view to go takes it out of the cache.
func TestSnapCacheSharesOneSnapshotPerView(t *testing.T) {
	c := newSnapCache(prometheus.NewRegistry())
	gen := cacheMesh(1)
	mesh := func() *topology.Mesh { return gen }
	a := c.acquire(xds.Registration{Service: "web", Upstreams: []string{"db", "web"}})
	b := c.acquire(xds.Registration{Service: "web", Upstreams: []string{"web", "db", "db"}, Network: v1.DefaultNetwork})
	other := c.acquire(xds.Registration{Service: "web", Upstreams: []string{"db"}})
	if a != b || a == other {
		t.Fatalf("views: a %p, b %p, other %p; want a == b != other", a, b, other)
	}
	ca, cb := c.get(a, mesh), c.get(b, mesh)
	wa, _ := ca.whole()
	wb, _ := cb.whole()
	if ca != cb || wa != wb {
		t.Errorf("two streams of one view got different snapshots or encodings")
	}
	c.get(other, mesh)
	if got := testutil.ToFloat64(c.computes); got != 2 {
		t.Errorf("computes = %v, want 2 (one per view)", got)
	}

	gen = cacheMesh(2) // a change: a new generation
	ca2 := c.get(a, mesh)
	if ca2 == ca || c.get(b, mesh) != ca2 {
		t.Errorf("after a change: same computed %v, shared %v; want a new one, shared", ca2 == ca, c.get(b, mesh) == ca2)
	}
	if got, want := len(ca2.snap.Upstream("db").Endpoints), 2; got != want {
		t.Errorf("after a change: %d db endpoints, want %d", got, want)
	}
	if got := testutil.ToFloat64(c.computes); got != 3 {
		t.Errorf("computes = %v, want 3", got)
	}
	p1, ok1, _ := ca2.patchFrom(ca)
	p2, ok2, _ := ca2.patchFrom(ca)
	if !ok1 || !ok2 || p1 != p2 {
		t.Errorf("patch from the old version: ok %v %v, shared %v; want one shared patch", ok1, ok2, p1 == p2)
	}

	c.release(a)
	c.release(other)
	if got := c.len(); got != 1 {
		t.Errorf("views after two releases = %d, want 1", got)
	}
	c.release(b)
	if got := c.len(); got != 0 {
		t.Errorf("views after the last release = %d, want 0", got)
	}
}

// Streams read a view's snapshot as last computed; a refresh advances
// every view and wakes the streams of those whose snapshot changed, and
// only them.
func TestSnapCacheRefreshWakesChangedViewsOnly(t *testing.T) {
	c := newSnapCache(prometheus.NewRegistry())
	gen := cacheMesh(1)
	gen.Services["cache"] = &v1.ServiceSpec{Protocol: "tcp"}
	mesh := func() *topology.Mesh { return gen }
	db := c.acquire(xds.Registration{Service: "web", Upstreams: []string{"db"}})
	other := c.acquire(xds.Registration{Service: "web", Upstreams: []string{"cache"}})
	first := c.current(db, mesh)
	c.current(other, mesh)
	dbChanged, otherChanged := db.changes(), other.changes()

	next := cacheMesh(2) // a second db instance: db's view changes, other's not
	next.Services["cache"] = gen.Services["cache"]
	gen = next
	if got := c.current(db, mesh); got != first {
		t.Errorf("current advanced the view before a refresh")
	}
	c.refresh(mesh)
	select {
	case <-dbChanged:
	default:
		t.Errorf("db's view changed; its streams were not woken")
	}
	select {
	case <-otherChanged:
		t.Errorf("the other view did not change; its streams were woken")
	default:
	}
	if got, want := len(c.current(db, mesh).snap.Upstream("db").Endpoints), 2; got != want {
		t.Errorf("after the refresh: %d db endpoints, want %d", got, want)
	}
}

// settle returns after a quiet spell, or at the maximum delay while
// changes keep coming, or when ctx ends.
func TestSettleDebouncesChanges(t *testing.T) {
	var mu sync.Mutex
	ch := make(chan struct{})
	changes := func() <-chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		return ch
	}
	change := func() {
		mu.Lock()
		defer mu.Unlock()
		close(ch)
		ch = make(chan struct{})
	}
	done := func(f func() bool) <-chan bool {
		out := make(chan bool, 1)
		go func() { out <- f() }()
		return out
	}
	ctx := context.Background()

	// Quiet: returns after the quiet time though the maximum is far.
	select {
	case ok := <-done(func() bool { return settle(ctx, changes, time.Millisecond, time.Hour) }):
		if !ok {
			t.Errorf("quiet: got false, want true")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("quiet: settle did not return")
	}

	// Changes that never stop: returns at the maximum delay.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				change()
				runtime.Gosched()
			}
		}
	})
	select {
	case ok := <-done(func() bool { return settle(ctx, changes, 50*time.Millisecond, 20*time.Millisecond) }):
		if !ok {
			t.Errorf("busy: got false, want true")
		}
	case <-time.After(10 * time.Second):
		t.Errorf("busy: settle waited past its maximum delay while changes kept coming")
	}
	close(stop)
	wg.Wait()

	// A change restarts the quiet time: with one pending change it waits
	// at least two quiet spells' worth of wakeups (observed as a second
	// call to changes).
	calls := 0
	counted := func() <-chan struct{} {
		calls++
		if calls == 1 {
			c := make(chan struct{})
			close(c)
			return c
		}
		return changes()
	}
	if !settle(ctx, counted, time.Millisecond, time.Hour) || calls != 2 {
		t.Errorf("after one change: %d calls to changes, want 2", calls)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if settle(cctx, changes, time.Hour, time.Hour) {
		t.Errorf("ended ctx: got true, want false")
	}
}
