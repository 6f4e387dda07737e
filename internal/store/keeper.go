package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A server holds one lease per proxy it serves. The etcd client's
// KeepAlive costs two goroutines per lease (the caller's loop and the
// client's own closer), 20,000 at 10,000 proxies with their stacks; the
// keeper renews every held lease on one keep-alive stream, from one
// sending goroutine and one receiving goroutine, whatever their number,
// and a third goroutine checks their deadlines.

// keeperTick is how often the keeper looks for leases due a keep-alive,
// and for leases past their deadline.
const keeperTick = 250 * time.Millisecond

// ErrLeaseLost is why a held lease ended: etcd answered that it no longer
// exists, or no keep-alive was answered within its TTL.
var ErrLeaseLost = errors.New("lease lost")

type keeper struct {
	c *clientv3.Client

	mu      sync.Mutex
	held    map[LeaseID]*heldLease
	wake    chan struct{} // a lease is due now
	running bool
	closed  bool
	stop    context.CancelFunc
	done    chan struct{}
}

type heldLease struct {
	ttl      time.Duration
	deadline time.Time // no renewal confirmed by then: lost
	nextSend time.Time
	sentAt   time.Time // of the oldest keep-alive not answered; zero when none
	// holders are the Holds not released, each told of a loss: a lease
	// may be held twice (a proxy's new stream adopting its registration
	// before its old stream on this server ended).
	holders []*holder
}

type holder struct{ lost func(error) }

// lose takes h's holders, to be told of its loss (report) once k.mu is
// unlocked: a release from now on finds none to remove. k.mu is held.
func (h *heldLease) lose() []*holder {
	holders := h.holders
	h.holders = nil
	return holders
}

// report tells holders that their lease is lost.
func report(holders []*holder, err error) {
	for _, o := range holders {
		o.lost(err)
	}
}

// Hold keeps the lease alive until release is called, together with every
// other lease held, without a goroutine of its own. ttl is the lease's
// TTL as granted (a lease held already keeps its own). A lease may be held
// more than once: it is renewed until every Hold is released. If the lease
// is lost (etcd says it is gone, or no keep-alive is answered for ttl),
// lost is called once for each Hold not released, with an error
// that wraps ErrLeaseLost, on the keeper's goroutine (on the caller's,
// at once, when the store is closed): it must not block.
// A loss found as release is called may still be reported just after it
// returns.
func (e *Etcd) Hold(id LeaseID, ttl time.Duration, lost func(error)) (release func()) {
	k := &e.keeper
	now := time.Now()
	o := &holder{lost: lost}
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		lost(fmt.Errorf("lease %x: %w: the store client is closed", id, ErrLeaseLost))
		return func() {}
	}
	if k.held == nil {
		k.held = make(map[LeaseID]*heldLease)
		k.wake = make(chan struct{}, 1)
	}
	// Held already: one more holder, on the renewals under way.
	h := k.held[id]
	if h == nil {
		h = &heldLease{ttl: ttl, deadline: now.Add(ttl), nextSend: now}
		k.held[id] = h
	}
	h.holders = append(h.holders, o)
	if !k.running {
		k.running = true
		ctx, cancel := context.WithCancel(context.Background())
		k.stop, k.done = cancel, make(chan struct{})
		go k.run(ctx, k.done)
	}
	k.mu.Unlock()
	select {
	case k.wake <- struct{}{}:
	default:
	}
	return func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		if i := slices.Index(h.holders, o); i >= 0 {
			h.holders = slices.Delete(h.holders, i, i+1)
			if len(h.holders) == 0 && k.held[id] == h {
				delete(k.held, id)
			}
		}
	}
}

// close stops the keeper's goroutines and waits for them. Leases still
// held are not reported lost: the client is closing.
func (k *keeper) close() {
	k.mu.Lock()
	stop, done := k.stop, k.done
	k.running, k.closed = false, true
	k.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// run keeps one keep-alive stream open while the client lives, and sends
// each held lease's keep-alive at a third of its TTL.
func (k *keeper) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	// Deadlines are checked apart from the stream: a Send blocks once etcd
	// stops reading (a stall, or a partition that drops packets) and more
	// keep-alives are due than the flow-control window holds, until the
	// client's pings give the connection up, well past a short TTL. A lease
	// must not stay held here meanwhile: etcd may let it go, and another
	// server take its registration.
	var expiring sync.WaitGroup
	defer expiring.Wait() // before done closes (deferred calls run last first)
	expiring.Go(func() {
		t := time.NewTicker(keeperTick)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				k.expire(now)
			}
		}
	})
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := k.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		_ = err // the deadlines say what it cost; the next stream retries
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// stream runs one keep-alive stream until it fails.
func (k *keeper) stream(ctx context.Context) error {
	sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	st, err := pb.NewLeaseClient(k.c.ActiveConnection()).LeaseKeepAlive(sctx)
	if err != nil {
		return err
	}
	// A new stream: every lease is due at once.
	k.mu.Lock()
	now := time.Now()
	for _, h := range k.held {
		h.nextSend, h.sentAt = now, time.Time{}
	}
	k.mu.Unlock()
	recvErr := make(chan error, 1)
	var recv sync.WaitGroup
	defer recv.Wait() // after cancel (deferred calls run last first)
	recv.Go(func() {
		for {
			r, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			k.answered(LeaseID(r.ID), r.TTL, time.Now())
		}
	})
	tick := time.NewTicker(keeperTick)
	defer tick.Stop()
	var due []LeaseID
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			return err
		case <-tick.C:
		case <-k.wake:
		}
		due = k.due(time.Now(), due[:0])
		for _, id := range due {
			if err := st.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)}); err != nil {
				return err
			}
		}
	}
}

// due lists the leases whose keep-alive is due at now, and schedules the
// next.
func (k *keeper) due(now time.Time, ids []LeaseID) []LeaseID {
	k.mu.Lock()
	defer k.mu.Unlock()
	for id, h := range k.held {
		if now.Before(h.nextSend) {
			continue
		}
		ids = append(ids, id)
		h.nextSend = now.Add(max(h.ttl/3, keeperTick))
		if h.sentAt.IsZero() {
			h.sentAt = now
		}
	}
	return ids
}

// answered records etcd's answer to a keep-alive: ttl seconds from the
// time the oldest unanswered one was sent (etcd renews on receipt, which
// is later), or gone when ttl is not positive.
func (k *keeper) answered(id LeaseID, ttl int64, now time.Time) {
	k.mu.Lock()
	h := k.held[id]
	if h == nil {
		k.mu.Unlock()
		return
	}
	if ttl <= 0 {
		delete(k.held, id)
		holders := h.lose()
		k.mu.Unlock()
		report(holders, fmt.Errorf("lease %x: %w: etcd no longer has it", id, ErrLeaseLost))
		return
	}
	if !h.sentAt.IsZero() {
		h.ttl = time.Duration(ttl) * time.Second
		h.deadline = h.sentAt.Add(h.ttl)
		h.sentAt = time.Time{}
	}
	k.mu.Unlock()
}

// expire reports the leases with no renewal confirmed within their TTL:
// etcd may have let them go.
func (k *keeper) expire(now time.Time) {
	type loss struct {
		id      LeaseID
		ttl     time.Duration
		holders []*holder
	}
	var lost []loss
	k.mu.Lock()
	for id, h := range k.held {
		if now.After(h.deadline) {
			delete(k.held, id)
			lost = append(lost, loss{id, h.ttl, h.lose()})
		}
	}
	k.mu.Unlock()
	for _, l := range lost {
		report(l.holders, fmt.Errorf("lease %x: %w: no keep-alive answered within its TTL (%v)", l.id, ErrLeaseLost, l.ttl))
	}
}
