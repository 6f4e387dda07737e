// Package storetest is the conformance suite for store.Store: every
// implementation, and every way of running one, must pass Run.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/store"
)

// Run runs the suite against the store newStore returns. Each subtest gets a
// fresh key prefix, so stores may be shared.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	t.Run("CRUD", func(t *testing.T) { testCRUD(t, newStore(t)) })
	t.Run("Commit", func(t *testing.T) { testCommit(t, newStore(t)) })
	t.Run("Watch", func(t *testing.T) { testWatch(t, newStore(t)) })
	t.Run("Lease", func(t *testing.T) { testLease(t, newStore(t)) })
	t.Run("LeasedCommit", func(t *testing.T) { testLeasedCommit(t, newStore(t)) })
	t.Run("CheckedCommit", func(t *testing.T) { testCheckedCommit(t, newStore(t)) })
	t.Run("ConcurrentCreate", func(t *testing.T) { testConcurrentCreate(t, newStore(t)) })
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func testCRUD(t *testing.T, s store.Store) {
	c := ctx(t)
	if _, err := s.Get(c, "/a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get missing: err = %v, want ErrNotFound", err)
	}
	if err := s.Put(c, "/a", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(c, "/b/x", []byte("2"), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(c, "/b/y", []byte("3"), 0); err != nil {
		t.Fatal(err)
	}
	kv, err := s.Get(c, "/a")
	if err != nil || string(kv.Value) != "1" || kv.Rev == 0 {
		t.Fatalf("Get = %+v, %v; want value 1 with a revision", kv, err)
	}
	list, rev, err := s.List(c, "/b/")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Key != "/b/x" || list[1].Key != "/b/y" || rev < list[1].Rev {
		t.Fatalf("List = %+v at %d; want /b/x, /b/y in order", list, rev)
	}
	if err := s.Create(c, "/a", []byte("other")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("Create existing: err = %v, want ErrExists", err)
	}
	if err := s.Delete(c, "/a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(c, "/a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Delete missing: err = %v, want ErrNotFound", err)
	}
	if err := s.Create(c, "/a", []byte("new")); err != nil {
		t.Fatalf("Create after delete: %v", err)
	}
}

func testCommit(t *testing.T, s store.Store) {
	c := ctx(t)
	if err := s.Put(c, "/k1", []byte("v1"), 0); err != nil {
		t.Fatal(err)
	}
	kv, _ := s.Get(c, "/k1")
	// A failed precondition applies nothing.
	err := s.Commit(c, []store.Op{
		{Key: "/k2", Value: []byte("v2")},
		{Key: "/k1", Value: []byte("x"), IfRev: kv.Rev + 1000},
	})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Commit with stale rev: err = %v, want ErrConflict", err)
	}
	if _, err := s.Get(c, "/k2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("half-applied commit: /k2 exists (err %v)", err)
	}
	err = s.Commit(c, []store.Op{
		{Key: "/k2", Value: []byte("v2"), IfRev: -1},
		{Key: "/k1", Delete: true, IfRev: kv.Rev},
	})
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if _, err := s.Get(c, "/k1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("/k1 still there after delete op")
	}
	if kv, err := s.Get(c, "/k2"); err != nil || string(kv.Value) != "v2" {
		t.Errorf("/k2 = %q, %v; want v2", kv.Value, err)
	}
}

// testCheckedCommit: a Check op guards the commit by a key it leaves
// alone.
func testCheckedCommit(t *testing.T, s store.Store) {
	c := ctx(t)
	if err := s.Put(c, "/guard", []byte("g"), 0); err != nil {
		t.Fatal(err)
	}
	g, _ := s.Get(c, "/guard")
	if err := s.Commit(c, []store.Op{{Key: "/guard", IfRev: g.Rev, Check: true}, {Key: "/w", Value: []byte("1")}}); err != nil {
		t.Fatalf("Commit guarded by an unchanged key: %v", err)
	}
	if kv, err := s.Get(c, "/guard"); err != nil || kv.Rev != g.Rev || string(kv.Value) != "g" {
		t.Errorf("the Check op wrote its key: %q at rev %d (was %d), %v", kv.Value, kv.Rev, g.Rev, err)
	}
	if err := s.Commit(c, []store.Op{{Key: "/absent", IfRev: -1, Check: true}, {Key: "/w", Value: []byte("2")}}); err != nil {
		t.Fatalf("Commit guarded by an absent key: %v", err)
	}
	if _, err := s.Get(c, "/absent"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the Check op created its key (err %v)", err)
	}
	if err := s.Put(c, "/guard", []byte("h"), 0); err != nil {
		t.Fatal(err)
	}
	err := s.Commit(c, []store.Op{{Key: "/guard", IfRev: g.Rev, Check: true}, {Key: "/w", Value: []byte("3")}})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Commit guarded by a changed key: err = %v, want ErrConflict", err)
	}
	if kv, _ := s.Get(c, "/w"); string(kv.Value) != "2" {
		t.Errorf("/w = %q after a failed guard, want 2", kv.Value)
	}
}

func testWatch(t *testing.T, s store.Store) {
	c := ctx(t)
	_, rev, err := s.List(c, "/w/")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(c)
	defer cancel()
	ch := s.Watch(wctx, "/w/", rev)
	s.Put(c, "/w/a", []byte("1"), 0)
	s.Put(c, "/other", []byte("x"), 0)
	s.Delete(c, "/w/a")
	var got []string
	for len(got) < 2 {
		select {
		case b, ok := <-ch:
			if !ok {
				t.Fatal("watch closed early")
			}
			if b.Err != nil {
				t.Fatal(b.Err)
			}
			for _, e := range b.Events {
				got = append(got, fmt.Sprintf("%d %s %s", e.Type, e.KV.Key, e.KV.Value))
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("watch: got %v after 10s, want 2 events", got)
		}
	}
	want := []string{"0 /w/a 1", "1 /w/a "}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events = %q, want %q", got, want)
	}
	cancel()
	for range ch { // must close after cancel
	}
}

func testLease(t *testing.T, s store.Store) {
	c := ctx(t)
	id, err := s.Grant(c, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(c, "/l/kept", []byte("1"), id); err != nil {
		t.Fatal(err)
	}
	kctx, stop := context.WithCancel(c)
	done := make(chan error, 1)
	go func() { done <- s.KeepAlive(kctx, id) }()
	time.Sleep(3 * time.Second) // longer than the TTL: only keep-alives save it
	if _, err := s.Get(c, "/l/kept"); err != nil {
		t.Fatalf("leased key gone while kept alive: %v", err)
	}
	stop()
	<-done
	if err := s.Revoke(c, id); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(c, "/l/kept"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("leased key survives revoke: %v", err)
	}
	// An abandoned lease expires on its own.
	id2, _ := s.Grant(c, time.Second)
	s.Put(c, "/l/abandoned", []byte("1"), id2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := s.Get(c, "/l/abandoned"); errors.Is(err, store.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("abandoned leased key still there after 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func testConcurrentCreate(t *testing.T, s store.Store) {
	c := ctx(t)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins int
	)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Create(c, "/once", []byte(fmt.Sprint(i))); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d concurrent creates won, want exactly 1", wins)
	}
}

// testLeasedCommit checks a Create under a lease in one commit, as a lock
// is taken: a second taker conflicts, and the key leaves with its lease.
func testLeasedCommit(t *testing.T, s store.Store) {
	c := ctx(t)
	id, err := s.Grant(c, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(c, []store.Op{{Key: "/lock", Value: []byte("a"), IfRev: -1, Lease: id}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(c, []store.Op{{Key: "/lock", Value: []byte("b"), IfRev: -1}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second taker: got %v, want a conflict", err)
	}
	if err := s.Revoke(c, id); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(c, "/lock"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("leased key survives its lease: %v", err)
	}
}
