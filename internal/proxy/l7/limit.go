package l7

import (
	"context"
	"slices"
	"sync"
)

// limiter is the circuit breaker on concurrent requests: up to max run,
// up to pending wait in order for a slot, the rest are refused at once.
// The limits are read per request, so a snapshot can change them.
type limiter struct {
	mu       sync.Mutex
	inflight int
	waiters  []chan struct{}
}

// acquire takes a slot, waiting while ctx lasts if allowed to; false means
// refused. Each true acquire must be followed by release.
func (l *limiter) acquire(ctx context.Context, max, pending int) bool {
	l.mu.Lock()
	if l.inflight < max {
		l.inflight++
		l.mu.Unlock()
		return true
	}
	if len(l.waiters) >= pending {
		l.mu.Unlock()
		return false
	}
	ch := make(chan struct{})
	l.waiters = append(l.waiters, ch)
	l.mu.Unlock()
	select {
	case <-ch:
		return true // release handed its slot over
	case <-ctx.Done():
		l.mu.Lock()
		i := slices.Index(l.waiters, ch)
		if i >= 0 {
			l.waiters = slices.Delete(l.waiters, i, i+1)
		}
		l.mu.Unlock()
		if i < 0 {
			l.release() // handed over as we gave up: pass it on
		}
		return false
	}
}

// release frees a slot, handing it to the first waiter if there is one.
func (l *limiter) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.waiters) > 0 {
		ch := l.waiters[0]
		l.waiters = l.waiters[1:]
		close(ch)
		return
	}
	l.inflight--
}
