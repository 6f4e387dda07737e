package store_test

import (
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// newExternal is a store on an etcd process of its own, and its pid.
func newExternal(t *testing.T, prefix string) (*store.Etcd, int) {
	t.Helper()
	url, proc := startExternalProc(t, "http")
	s, err := store.NewEtcd(t.Context(), store.EtcdConfig{Endpoints: []string{url}, DialTimeout: time.Second, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, proc.Pid
}

// leased grants n leases of ttl, each with a key under it.
func leased(t *testing.T, s store.Store, n int, ttl time.Duration) []store.LeaseID {
	t.Helper()
	ids := make([]store.LeaseID, n)
	for i := range ids {
		id, err := s.Grant(t.Context(), ttl)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Commit(t.Context(), []store.Op{{Key: fmt.Sprintf("/held/%d", i), Value: []byte("v"), Lease: id}}); err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	return ids
}

// Held leases outlive their TTL with no goroutine each; a released one
// expires; a revoked one is reported lost, once, as ErrLeaseLost.
func TestHoldManyLeases(t *testing.T) {
	s, _ := newExternal(t, "/hold")
	const n = 300
	ttl := 2 * time.Second
	ids := leased(t, s, n, ttl)
	before := runtime.NumGoroutine()
	lost := make(chan error, n)
	release := make([]func(), n)
	for i, id := range ids {
		release[i] = s.Hold(id, ttl, func(err error) { lost <- err })
	}
	if g := runtime.NumGoroutine() - before; g > 10 {
		t.Errorf("%d leases held by %d more goroutines, want a handful", n, g)
	}
	release[1]()
	if err := s.Revoke(t.Context(), ids[2]); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-lost:
		if !errors.Is(err, store.ErrLeaseLost) {
			t.Errorf("revoked lease reported as %v, want ErrLeaseLost", err)
		}
	case <-time.After(2 * ttl):
		t.Fatal("revoked lease not reported lost")
	}
	// The released lease's key going is the clock: its lease was granted
	// with the others, so without keep-alives they would be gone too.
	waitGone(t, s, "/held/1", 3*ttl)
	for i := range ids {
		_, err := s.Get(t.Context(), fmt.Sprintf("/held/%d", i))
		switch i {
		case 1, 2:
			if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("key %d (lease released or revoked) after 2 TTLs: %v", i, err)
			}
		default:
			if err != nil {
				t.Fatalf("key %d of a held lease after 2 TTLs: %v", i, err)
			}
		}
	}
	select {
	case err := <-lost:
		t.Errorf("another lease reported lost: %v", err)
	default:
	}
	for _, r := range release {
		r()
	}
}

// etcd that stalls for less than the TTL costs no lease; one that stalls
// past it costs every held lease, each reported once.
func TestHoldThroughStalls(t *testing.T) {
	s, pid := newExternal(t, "/stall")
	ttl := 5 * time.Second
	ids := leased(t, s, 3, ttl)
	lost := make(chan error, len(ids))
	for _, id := range ids {
		defer s.Hold(id, ttl, func(err error) { lost <- err })()
	}
	stall := func(d time.Duration) {
		t.Helper()
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer syscall.Kill(pid, syscall.SIGCONT)
		select {
		case err := <-lost:
			if d < ttl {
				t.Fatalf("lease lost during a %v stall: %v", d, err)
			}
			lost <- err
		case <-time.After(d): // the stall is the fault under test
		}
	}
	stall(3 * time.Second)
	select {
	case err := <-lost:
		t.Fatalf("lease lost after a short stall: %v", err)
	case <-time.After(2 * ttl):
	}
	stall(ttl + 2*time.Second)
	for range ids {
		select {
		case err := <-lost:
			if !errors.Is(err, store.ErrLeaseLost) {
				t.Errorf("lost as %v, want ErrLeaseLost", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a lease not reported lost after a stall past its TTL")
		}
	}
}

// A held lease is reported lost within its TTL even when the keep-alive
// stream is blocked: etcd stopped reading (stalled, or a partition that
// drops packets) while more keep-alives are due than its flow-control
// window takes, so the keeper's Send blocks until the client's pings give
// the connection up, long after the TTL. Meanwhile etcd may let the lease
// go and another server take the registration.
func TestHoldLostWhileSendBlocks(t *testing.T) {
	s, pid := newExternal(t, "/blocked")
	ttl := 2 * time.Second
	ids := leased(t, s, 1, ttl)
	lost := make(chan error, 1)
	defer s.Hold(ids[0], ttl, func(err error) { lost <- err })()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	// Leases etcd never granted: their keep-alives only fill the window
	// (a few hundred kilobytes) while etcd reads nothing.
	const fill = 50000
	for i := range fill {
		defer s.Hold(store.LeaseID(1<<40+i), ttl, func(error) {})()
	}
	select {
	case err := <-lost:
		if !errors.Is(err, store.ErrLeaseLost) {
			t.Errorf("lost as %v, want ErrLeaseLost", err)
		}
	case <-time.After(ttl + 3*time.Second): // the connection's pings give up at 15s
		t.Fatal("lease not reported lost within its TTL while the keep-alive stream was blocked")
	}
}

// A lease held twice (a proxy's new stream adopting the registration while
// its old stream on the same server has not ended yet) stays held until
// both release it, and each holder hears of its loss: the second Hold
// neither takes the first's renewals with it when released nor silences
// the first's report.
func TestHoldSameLeaseTwice(t *testing.T) {
	s, _ := newExternal(t, "/twice")
	ttl := 2 * time.Second
	ids := leased(t, s, 1, ttl)
	first, second := make(chan error, 1), make(chan error, 1)
	release1 := s.Hold(ids[0], ttl, func(err error) { first <- err })
	defer release1()
	release2 := s.Hold(ids[0], ttl, func(err error) { second <- err })
	if err := s.Revoke(t.Context(), ids[0]); err != nil {
		t.Fatal(err)
	}
	for name, lost := range map[string]chan error{"first": first, "second": second} {
		select {
		case err := <-lost:
			if !errors.Is(err, store.ErrLeaseLost) {
				t.Errorf("%s holder: lost as %v, want ErrLeaseLost", name, err)
			}
		case <-time.After(2 * ttl):
			t.Errorf("%s holder of a revoked lease not told it was lost", name)
		}
	}
	release2()

	ids = leased(t, s, 2, ttl)
	release1 = s.Hold(ids[0], ttl, func(err error) { first <- err })
	defer release1()
	s.Hold(ids[0], ttl, func(err error) { second <- err })() // held and released at once
	// The unheld lease's key going is the clock: only the first holder's
	// keep-alives keep the other.
	waitGone(t, s, "/held/1", 3*ttl)
	if _, err := s.Get(t.Context(), "/held/0"); err != nil {
		t.Errorf("key of a lease still held once, after 2 TTLs: %v", err)
	}
	select {
	case err := <-first:
		t.Errorf("lease still held reported lost: %v", err)
	default:
	}
}

// waitGone waits for key to be deleted (its lease expired).
func waitGone(t *testing.T, s store.Store, key string, within time.Duration) {
	t.Helper()
	trellistest.Eventually(t, within, key+" gone with its lease", func() error {
		if _, err := s.Get(t.Context(), key); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
}
