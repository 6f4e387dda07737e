package control

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/topology"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// Snapshots are computed once per view, not per proxy. A view is what
// topology.Compute reads of a proxy (its service, its upstreams as a set,
// its effective network): proxies of one view get the same snapshot. The
// cache holds, per view in use, the snapshot of the newest mesh
// generation (state.mesh's pointer) a stream asked for, computed and
// encoded by the first stream to ask and shared read-only by all.
//
// A stream computes lazily, when it wakes, against the newest mesh: a
// burst of changes costs each view one computation per generation some
// stream saw, and a stream that is behind skips to the newest. Views are
// counted by the streams that use them and dropped with the last, so the
// cache holds at most one view per stream and nothing of proxies gone.
//
// Views advance in one place: one goroutine (Server.refreshViews)
// recomputes every view after the mesh changed and settled (debounce),
// and a view's changed channel is closed when its snapshot's version
// changes. Streams take their view's current snapshot (current) and wake
// for their view only. With every stream computing against the newest
// mesh and waking at every change, 10,000 proxies connecting meant every
// registration woke every stream, and each proxy was sent a patch for
// each instance of its upstreams that registered after it: pushes grew
// with the square of N. Now a burst of changes is one round of pushes.
//
// Lock order: snapCache.mu, then view.mu (never the other way), then
// computed.mu.
type snapCache struct {
	mu    sync.Mutex
	views map[string]*view // by viewKey; guarded by mu

	computes prometheus.Counter
	patches  prometheus.Counter
}

// view is one distinct view's cache entry.
type view struct {
	key   string
	proxy topology.Proxy // canonical: sorted upstreams, effective network
	refs  int            // streams using it; guarded by snapCache.mu

	mu   sync.Mutex     // held while computing; guards mesh, cur and changed
	mesh *topology.Mesh // the generation cur was computed from
	cur  *computed
	// changed is closed, and replaced, when cur's version changes.
	changed chan struct{}
}

// changes returns a channel closed when the view's snapshot changes
// version. A stream takes it before current: a change after that closes it.
func (v *view) changes() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.changed
}

// computed is one view's snapshot for one mesh generation. Streams share
// it read-only; it stays alive while a stream's last push was it.
type computed struct {
	snap  *topology.Snapshot
	res   *topology.Resources
	paths []v1.UpstreamPath // topology.Paths(snap)
	roots []string          // fingerprints of snap's roots

	// Responses are encoded once and shared by the view's streams
	// (xds.Encoded): a push costs a stream its nonce.
	fullOnce sync.Once
	full     *xds.Encoded
	fullErr  error

	mu      sync.Mutex
	patches map[string]patchEntry // by the version patched from; guarded by mu
}

type patchEntry struct {
	res *xds.Encoded
	ok  bool
	err error
}

// maxPatchesPerSnapshot bounds the patches a computed snapshot keeps:
// streams of one view are nearly always at one of a few versions.
const maxPatchesPerSnapshot = 8

func newSnapCache(reg prometheus.Registerer) *snapCache {
	c := &snapCache{
		views: map[string]*view{},
		computes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_control_snapshot_computes_total", Help: "Snapshots computed, once per distinct proxy view and mesh change.",
		}),
		patches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trellis_control_snapshot_patches_total", Help: "Snapshots sent to proxies as patches of the one they held (counted in trellis_control_snapshots_pushed_total too).",
		}),
	}
	views := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "trellis_control_snapshot_views", Help: "Distinct proxy views whose snapshots are cached.",
	}, func() float64 { return float64(c.len()) })
	reg.MustRegister(c.computes, c.patches, views)
	return c
}

// viewOf returns the canonical view of a registration and its key.
func viewOf(reg xds.Registration) (topology.Proxy, string) {
	ups := slices.Clone(reg.Upstreams)
	slices.Sort(ups)
	ups = slices.Compact(ups)
	p := topology.Proxy{Service: reg.Service, Upstreams: ups, Network: v1.EffectiveNetwork(reg.Network)}
	// Service, network and upstream names have no NUL or comma.
	return p, p.Service + "\x00" + p.Network + "\x00" + strings.Join(ups, ",")
}

// acquire returns the view of reg, counting the caller in; release it when
// done.
func (c *snapCache) acquire(reg xds.Registration) *view {
	p, key := viewOf(reg)
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.views[key]
	if v == nil {
		v = &view{key: key, proxy: p, changed: make(chan struct{})}
		c.views[key] = v
	}
	v.refs++
	return v
}

// release counts a caller of acquire out; the last one drops the view.
func (c *snapCache) release(v *view) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v.refs--
	if v.refs == 0 && c.views[v.key] == v {
		delete(c.views, v.key)
	}
}

func (c *snapCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.views)
}

// get returns v's snapshot for the newest mesh generation (mesh returns
// it), computing it if no stream did yet. Streams of v asking at once
// wait for one computation. The generation is read under v's lock, so a
// view never goes back to an older one.
func (c *snapCache) get(v *view, mesh func() *topology.Mesh) *computed {
	v.mu.Lock()
	defer v.mu.Unlock()
	return c.getLocked(v, mesh)
}

// current returns v's snapshot as last computed, computing it only if
// none was: streams do not advance views, refresh does.
func (c *snapCache) current(v *view, mesh func() *topology.Mesh) *computed {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cur != nil {
		return v.cur
	}
	return c.getLocked(v, mesh)
}

func (c *snapCache) getLocked(v *view, mesh func() *topology.Mesh) *computed {
	m := mesh()
	if v.mesh == m && v.cur != nil {
		return v.cur
	}
	snap, res := topology.ComputeSplit(m, v.proxy)
	c.computes.Inc()
	if v.cur != nil && v.cur.snap.Version == snap.Version {
		// Nothing of this view changed: keep the encodings (and the
		// patches to it) made so far.
		v.mesh = m
		return v.cur
	}
	cp := &computed{snap: snap, res: res, paths: topology.Paths(snap)}
	if v.cur != nil && v.cur.snap.RootsPEM == snap.RootsPEM {
		cp.roots = v.cur.roots
	} else {
		cp.roots = certs.Fingerprints([]byte(snap.RootsPEM))
	}
	if v.cur != nil {
		close(v.changed)
		v.changed = make(chan struct{})
	}
	v.mesh, v.cur = m, cp
	return cp
}

// refresh brings every view to the newest mesh generation, waking the
// streams of those whose snapshot changed.
func (c *snapCache) refresh(mesh func() *topology.Mesh) {
	c.mu.Lock()
	views := make([]*view, 0, len(c.views))
	for _, v := range c.views {
		views = append(views, v)
	}
	c.mu.Unlock()
	for _, v := range views {
		c.get(v, mesh)
	}
}

// whole returns the response that carries the whole snapshot, encoded
// once.
func (cp *computed) whole() (*xds.Encoded, error) {
	cp.fullOnce.Do(func() { cp.full, cp.fullErr = xds.EncodeResponse(cp.snap.Version, xds.FullResource(cp.res)) })
	return cp.full, cp.fullErr
}

// patchFrom returns the response that patches from's snapshot into cp's,
// encoded, or false when the whole snapshot is as small. Streams at one
// version share one.
func (cp *computed) patchFrom(from *computed) (*xds.Encoded, bool, error) {
	cp.mu.Lock()
	e, hit := cp.patches[from.snap.Version]
	cp.mu.Unlock()
	if hit {
		return e.res, e.ok, e.err
	}
	res, ok := xds.PatchResource(from.res, cp.res)
	if ok {
		e.res, e.err = xds.EncodeResponse(cp.snap.Version, res)
	}
	e.ok = ok
	cp.mu.Lock()
	if cp.patches == nil {
		cp.patches = map[string]patchEntry{}
	}
	if len(cp.patches) < maxPatchesPerSnapshot {
		cp.patches[from.snap.Version] = e
	}
	cp.mu.Unlock()
	return e.res, e.ok, e.err
}

// Debounce of view refreshes (Server.refreshViews): a round starts once
// the mesh has not changed for refreshQuiet, or refreshMaxDelay after the
// first change it takes, whichever comes first. The quiet time is what a
// lone change waits; the maximum bounds the wait while changes keep
// coming (thousands of proxies registering), so that a burst of N
// registrations costs each proxy a push per refreshMaxDelay, not one per
// registration.
const (
	refreshQuiet    = 50 * time.Millisecond
	refreshMaxDelay = time.Second
)

// refreshViews brings the views to the newest mesh after every change,
// debounced, until ctx ends: the streams of a view whose snapshot
// changed wake then.
func (s *Server) refreshViews(ctx context.Context) {
	for {
		changed := s.state.Changed()
		s.snaps.refresh(s.state.mesh)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		if !settle(ctx, s.state.Changed, refreshQuiet, refreshMaxDelay) {
			return
		}
	}
}

// settle returns once changes (which returns a channel closed at the next
// change) stayed quiet for quiet, or maxDelay after it was called,
// whichever comes first; false if ctx ended first.
func settle(ctx context.Context, changes func() <-chan struct{}, quiet, maxDelay time.Duration) bool {
	deadline := time.Now().Add(maxDelay)
	for {
		ch := changes()
		wait := min(quiet, time.Until(deadline))
		if wait <= 0 {
			return true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
			return true
		case <-ch:
			t.Stop()
		}
	}
}
