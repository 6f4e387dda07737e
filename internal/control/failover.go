package control

import (
	"context"
	"errors"
	mrand "math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// Moving proxies off this server. A proxy's stream ends with a
// xds.MoveStatus, which sends the proxy to another server of its list at
// once, when this server stops, when it cannot reach its store (and then
// it refuses new streams until the store is back), and when the stream
// reaches its age: the slow rebalance that spreads proxies onto a server
// that joined.
const (
	// DefaultMaxStreamAge is the default Config.MaxStreamAge: Istio's
	// MaxConnectionAge. With every proxy taking a random server when it
	// moves, a joining server gets its share within about this long.
	DefaultMaxStreamAge = 30 * time.Minute
	// storeProbeInterval and storeProbeTimeout pace the linearizable read
	// that tells whether the store (its quorum) answers.
	storeProbeInterval = time.Second
	storeProbeTimeout  = 2 * time.Second
	// storeLossAfter is how long the store must fail every probe before
	// this server gives up its proxies: long enough to ride out an etcd
	// leader election, short enough that proxies do not sit for long on
	// a server that can neither register them nor see the mesh change.
	storeLossAfter = 5 * time.Second
)

// movers says whether streams must leave this server, and why. Safe for
// concurrent use.
type movers struct {
	mu        sync.Mutex
	stopping  bool
	storeLost bool
	// gone is closed when streams must leave; replaced by an open one
	// when they may stay again.
	gone chan struct{}
	// back is closed when streams may stay again after having had to
	// leave (the store is back), and at once replaced by an open one: it
	// wakes whoever waited for that, such as the writes being settled.
	back chan struct{}
}

func newMovers() *movers { return &movers{gone: make(chan struct{}), back: make(chan struct{})} }

// reasonLocked is why streams must leave, "" when they may stay.
func (m *movers) reasonLocked() string {
	switch {
	case m.stopping:
		return "server stopping"
	case m.storeLost:
		return "server cannot reach its store"
	}
	return ""
}

// current returns why streams must leave ("" when they may stay) and a
// channel closed when they must.
func (m *movers) current() (string, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reasonLocked(), m.gone
}

// set changes one condition and wakes the streams when they must leave.
func (m *movers) set(f func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	before := m.reasonLocked()
	f()
	switch after := m.reasonLocked(); {
	case before == "" && after != "":
		close(m.gone)
	case before != "" && after == "":
		m.gone = make(chan struct{})
		close(m.back)
		m.back = make(chan struct{})
	}
}

// returned returns a channel closed the next time streams may stay again
// after having had to leave: when the store comes back.
func (m *movers) returned() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.back
}

// streamRefusal is the status a new proxy stream is refused with, nil when
// this server takes streams.
func (s *Server) streamRefusal() error {
	if why, _ := s.movers.current(); why != "" {
		return xds.MoveStatus(why)
	}
	return nil
}

// whileServing returns a context that ends with ctx, or as soon as
// streams must leave this server. A stream's registration waits on the
// store: one that came in during the seconds between the store going
// away and this server finding out would hold its proxy until the store
// is back, where it should be sent to another server.
func (s *Server) whileServing(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	_, gone := s.movers.current()
	s.goStream(func() {
		select {
		case <-ctx.Done():
		case <-gone:
			cancel()
		}
	})
	return ctx, cancel
}

// streamMove says when a proxy stream must end to move its proxy: when
// this server stops or loses its store (gone is closed; moveStatus says
// why), or when the stream is MaxStreamAge old, give or take 10% (as
// gRPC's MaxConnectionAge), so that proxies connected together do not all
// move together (age fires). The stream's handler selects on both itself:
// no goroutine per stream. The caller stops age.
func (s *Server) streamMove() (age *time.Timer, gone <-chan struct{}) {
	d := s.cfg.MaxStreamAge
	d += time.Duration(mrand.Int64N(int64(d)/5+1)) - d/10
	_, gone = s.movers.current()
	return time.NewTimer(d), gone
}

// moveStatus is the status a stream ends with when gone was closed.
func (s *Server) moveStatus() error {
	why, _ := s.movers.current()
	if why == "" {
		why = "server asked"
	}
	return xds.MoveStatus(why)
}

// watchStore probes the store until ctx ends. After storeLossAfter of
// failed probes it marks the store lost: /healthz answers 503, proxy
// streams move elsewhere and new ones are refused, until a probe succeeds.
func (s *Server) watchStore(ctx context.Context) {
	var failingSince time.Time
	lost := false
	for ctx.Err() == nil {
		began := time.Now()
		pctx, cancel := context.WithTimeout(ctx, storeProbeTimeout)
		_, err := s.store.Get(pctx, keyBootstrap)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if !probeFailed(err, began, s.applied()) {
			failingSince = time.Time{}
			if lost {
				lost = false
				s.movers.set(func() { s.movers.storeLost = false })
				s.log.Info("store reachable again; taking proxy streams")
			}
		} else {
			if failingSince.IsZero() {
				failingSince = began
			}
			if !lost && time.Since(failingSince) >= storeLossAfter {
				lost = true
				s.movers.set(func() { s.movers.storeLost = true })
				s.log.Warn("store unreachable; not serving: proxies sent to other servers", "err", err, "for", time.Since(failingSince).Round(time.Second))
			}
		}
		sleep(ctx, storeProbeInterval)
	}
}

// probeFailed says whether a store probe begun at began, which ended
// with err, counts as failed. A probe that timed out while the store
// applied one of this server's writes (lastApplied: liveStore) does not:
// the quorum answers, only slowly. Under a burst of registrations from
// thousands of proxies the probe's read waited behind etcd's apply queue
// for seconds, the server declared its store lost and sent every proxy
// away, which brought them all back at once.
func probeFailed(err error, began, lastApplied time.Time) bool {
	if err == nil || errors.Is(err, store.ErrNotFound) {
		return false
	}
	return !lastApplied.After(began.Add(-storeProbeInterval))
}

// liveStore is the server's store, noting when it last applied a write of
// this server's: a write the store applied needed its quorum, so the
// store answers (probeFailed).
type liveStore struct {
	store.Store
	lastApplied atomic.Int64 // UnixNano; 0: never
}

func (l *liveStore) Commit(ctx context.Context, ops []store.Op) error {
	err := l.Store.Commit(ctx, ops)
	if err == nil {
		l.lastApplied.Store(time.Now().UnixNano())
	}
	return err
}

func (l *liveStore) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	id, err := l.Store.Grant(ctx, ttl)
	if err == nil {
		l.lastApplied.Store(time.Now().UnixNano())
	}
	return id, err
}

// applied returns when the store last applied a write of this server's;
// the zero time if never, or if the store is not a liveStore (tests).
func (s *Server) applied() time.Time {
	if l, ok := s.store.(*liveStore); ok {
		if n := l.lastApplied.Load(); n != 0 {
			return time.Unix(0, n)
		}
	}
	return time.Time{}
}

// healthz answers, without a token (load balancers and orchestrators ask
// it), whether this server should be sent proxies and requests: 200
// while it serves; 503 naming why while it stops or cannot reach its
// store, or while its view of the store is stale (its watch is down, or
// a leader-checked read has failed for a while: stale.go). It says
// nothing about the mesh's contents, nor the store's errors.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	if why, _ := s.movers.current(); why != "" {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not serving", "reason": why})
		return
	}
	// Not the store's error (staleness): this answer takes no token.
	if why := s.state.staleSince(time.Now()); why != "" {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "stale", "reason": why})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "serving"})
}
