package control

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/store"
)

// DefaultStatusInterval is how often, at most, a proxy's status is written
// to the store when only its versions change.
const DefaultStatusInterval = 5 * time.Second

// statusFlushers bounds the status writes in flight at once.
const statusFlushers = 8

// A proxy's status changes with every push and acknowledgement (its sent
// and acknowledged versions); it lives in memory and reaches the store,
// for every server's API and dashboard, at most once per
// Config.StatusInterval per proxy. Other changes are rare, and some a
// reader waits for, so they are written at once (statusUrgent).

// streamStatus is a stream's status as written to the store. mu guards it;
// the stream's push goroutine notes, the flusher or the push goroutine
// writes, deregistration closes.
type streamStatus struct {
	mu        sync.Mutex
	pending   *v1.ProxyStatus // noted, not yet written
	written   v1.ProxyStatus  // last written
	lastWrite time.Time
	closed    bool // deregistered: nothing more is written
}

// statusWritten records st as written by the registration's commit.
func (ps *proxyStream) statusWritten(st v1.ProxyStatus) {
	ps.st.mu.Lock()
	defer ps.st.mu.Unlock()
	ps.st.written, ps.st.lastWrite = st, time.Now()
}

// writeStatus notes the stream's current status: written now if a reader
// waits for the change or the last write is an interval old, else by the
// flusher when it is. Only the push goroutine calls it.
func (ps *proxyStream) writeStatus(ctx context.Context) {
	st := ps.status
	ps.st.mu.Lock()
	defer ps.st.mu.Unlock()
	if ps.st.closed {
		return
	}
	ps.st.pending = &st
	if !statusUrgent(ps.st.written, st) && time.Since(ps.st.lastWrite) < ps.s.cfg.StatusInterval {
		ps.s.flusher.add(ps)
		return
	}
	ps.flushLocked(ctx)
}

// statusUrgent reports whether the change from was to now is one a reader
// waits for, to be written at once: anything but the versions, which
// change with every push and acknowledgement. The rest changes rarely: a
// rejection or its end, newly trusted roots (a root rotation waits for
// every proxy's), an upstream's path, the proxy's node or certificate.
func statusUrgent(was, now v1.ProxyStatus) bool {
	return now.Error != was.Error || !slices.Equal(now.AckedRoots, was.AckedRoots) ||
		!slices.Equal(now.Paths, was.Paths) || now.Node != was.Node ||
		(now.SVIDExpiresAt == nil) != (was.SVIDExpiresAt == nil) ||
		now.SVIDExpiresAt != nil && !now.SVIDExpiresAt.Equal(*was.SVIDExpiresAt)
}

// flushLocked writes the pending status, if any; ps.st.mu is held.
func (ps *proxyStream) flushLocked(ctx context.Context) {
	if ps.st.pending == nil || ps.st.closed {
		return
	}
	st := *ps.st.pending
	b, err := json.Marshal(st)
	if err == nil {
		err = ps.commitHeld(ctx, []store.Op{{Key: statusKey(ps.reg.Service, ps.reg.Instance), Value: b, Lease: ps.lease}})
	}
	// Written or not, the next try is an interval away: a store that
	// fails is not asked again for every acknowledgement.
	ps.st.lastWrite = time.Now()
	switch {
	case err == nil:
		ps.st.written, ps.st.pending = st, nil
	case errors.Is(err, errRegistrationMoved):
		ps.st.pending = nil
	default:
		if ctx.Err() == nil {
			ps.s.log.Warn("write proxy status", "instance", ps.reg.Instance, "err", err)
		}
		ps.s.flusher.add(ps)
	}
}

// closeStatus stops the stream's status writes, waiting for one in flight.
func (ps *proxyStream) closeStatus() {
	ps.st.mu.Lock()
	ps.st.closed, ps.st.pending = true, nil
	ps.st.mu.Unlock()
	ps.s.flusher.remove(ps)
}

// statusFlusher writes the statuses noted but not yet written once their
// interval has passed.
type statusFlusher struct {
	interval time.Duration
	mu       sync.Mutex
	due      map[*proxyStream]struct{}
}

func newStatusFlusher(interval time.Duration) *statusFlusher {
	return &statusFlusher{interval: interval, due: map[*proxyStream]struct{}{}}
}

func (f *statusFlusher) add(ps *proxyStream) {
	f.mu.Lock()
	f.due[ps] = struct{}{}
	f.mu.Unlock()
}

func (f *statusFlusher) remove(ps *proxyStream) {
	f.mu.Lock()
	delete(f.due, ps)
	f.mu.Unlock()
}

// run writes due statuses every quarter interval until ctx ends, a few at
// a time; it waits for its writes before returning.
func (f *statusFlusher) run(ctx context.Context) {
	t := time.NewTicker(max(f.interval/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f.mu.Lock()
		due := make([]*proxyStream, 0, len(f.due))
		for ps := range f.due {
			due = append(due, ps)
		}
		clear(f.due)
		f.mu.Unlock()
		var wg sync.WaitGroup
		sem := make(chan struct{}, statusFlushers)
		for _, ps := range due {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				f.flush(ctx, ps)
			})
		}
		wg.Wait()
	}
}

// flush writes ps's status if its interval has passed, else puts it back.
func (f *statusFlusher) flush(ctx context.Context, ps *proxyStream) {
	ps.st.mu.Lock()
	defer ps.st.mu.Unlock()
	if ps.st.closed || ps.st.pending == nil {
		return
	}
	if time.Since(ps.st.lastWrite) < f.interval {
		f.add(ps)
		return
	}
	ps.flushLocked(ctx)
}
