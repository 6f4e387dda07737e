package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// delayingStore holds commits, as a partition holds a request in a TCP
// send queue: the caller gives up at its deadline, and the held commit
// reaches the real store when released, whatever the caller was told.
type delayingStore struct {
	store.Store
	mu sync.Mutex
	// hold is how many of the next commits to hold; -1 holds all.
	hold    int
	release chan struct{}
	late    sync.WaitGroup
	// gaveUp counts the held commits whose caller gave up.
	gaveUp atomic.Int64
}

func (d *delayingStore) Commit(ctx context.Context, ops []store.Op) error {
	d.mu.Lock()
	// Only API writes and their fences: a token's last-use write is not
	// one.
	held := d.hold != 0 && slices.ContainsFunc(ops, func(op store.Op) bool { return strings.HasPrefix(op.Key, keyWrites) })
	if held && d.hold > 0 {
		d.hold--
	}
	release := d.release
	if held {
		d.late.Add(1)
	}
	d.mu.Unlock()
	if !held {
		return d.Store.Commit(ctx, ops)
	}
	done := make(chan error, 1)
	go func() {
		defer d.late.Done()
		<-release
		done <- d.Store.Commit(context.Background(), ops)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		d.gaveUp.Add(1)
		return fmt.Errorf("commit: %w", ctx.Err())
	}
}

// setHold holds the next n commits (-1: all) until the next release.
func (d *delayingStore) setHold(n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hold = n
	d.release = make(chan struct{})
}

// stopHolding lets new commits through; those held stay held until
// releaseAll.
func (d *delayingStore) stopHolding() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hold = 0
}

// releaseAll delivers every held commit, in no set order, and waits.
func (d *delayingStore) releaseAll() {
	d.mu.Lock()
	d.hold = 0
	close(d.release)
	d.mu.Unlock()
	d.late.Wait()
}

// newWriteServer runs the parts of a server that API writes need on an
// embedded etcd, and returns it with the store between them and an admin
// token.
func newWriteServer(t *testing.T) (*Server, *delayingStore, string) {
	t.Helper()
	ctx := t.Context()
	emb, err := store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	st, err := store.NewEtcd(ctx, emb.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s, err := New(Config{DataDir: t.TempDir(), WriteTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ds := &delayingStore{Store: st, release: make(chan struct{})}
	s.store = ds
	bgCtx, cancel := context.WithCancel(ctx)
	s.bgCtx = bgCtx
	t.Cleanup(func() { s.stopBackground(cancel) })
	s.goBackground(func() { s.state.run(bgCtx, st) })
	<-s.state.ready
	secret, _, err := createToken(ctx, st.Commit, v1.Token{Admin: true})
	if err != nil {
		t.Fatal(err)
	}
	return s, ds, secret
}

type writeAnswer struct {
	code    int
	outcome string
	body    map[string]string
	took    time.Duration
}

func callWrite(t *testing.T, s *Server, token, method, path, key string, body any) writeAnswer {
	t.Helper()
	b, _ := json.Marshal(body)
	r := httptest.NewRequest(method, path, bytes.NewReader(b))
	r.Header.Set("Authorization", "Bearer "+token)
	if key != "" {
		r.Header.Set(idempotencyHeader, key)
	}
	w := httptest.NewRecorder()
	start := time.Now()
	s.routes().ServeHTTP(w, r)
	a := writeAnswer{code: w.Code, outcome: w.Header().Get(outcomeHeader), took: time.Since(start)}
	_ = json.Unmarshal(w.Body.Bytes(), &a.body)
	return a
}

func service(name string) []v1.Resource {
	return []v1.Resource{{Kind: v1.KindService, Name: name, Service: &v1.ServiceSpec{Protocol: "http"}}}
}

func stored(t *testing.T, st store.Store, name string) bool {
	t.Helper()
	_, err := st.Get(t.Context(), resourceKey(v1.KindService, name))
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// A write the store does not confirm in time is answered within the
// deadline, and when the writeAnswer is "not applied", the write arriving
// late is not applied either: it was fenced off.
func TestWriteAnsweredNotAppliedNeverAppliesLater(t *testing.T) {
	s, ds, admin := newWriteServer(t)
	ds.setHold(1) // the write's commit; its fence gets through
	a := callWrite(t, s, admin, "POST", "/v1/resources", "", service("late"))
	if a.code != http.StatusServiceUnavailable || a.outcome != outcomeNotApplied {
		t.Fatalf("got %d %q %v, want 503 not-applied", a.code, a.outcome, a.body)
	}
	if a.took > s.cfg.WriteTimeout+time.Second {
		t.Errorf("answered after %v, want within the deadline of %v", a.took, s.cfg.WriteTimeout)
	}
	ds.releaseAll() // the held write reaches the store now
	if stored(t, ds.Store, "late") {
		t.Fatal("a write answered as not applied was applied later")
	}
}

// When the store answers neither the write nor its fence, the writeAnswer says
// the outcome is unknown; once the store is back, the write is settled
// (the record and the store agree), and a retry with the same key applies
// it exactly once.
func TestWriteOfUnknownOutcomeSettlesAndRetriesSafely(t *testing.T) {
	s, ds, admin := newWriteServer(t)
	const key = "retry-key-0123456789"
	ds.setHold(-1)
	a := callWrite(t, s, admin, "POST", "/v1/resources", key, service("maybe"))
	if a.code != http.StatusServiceUnavailable || a.outcome != outcomeUnknown || a.body["writeKey"] != key {
		t.Fatalf("got %d %q %v, want 503 unknown naming the key", a.code, a.outcome, a.body)
	}
	if !strings.Contains(a.body["error"], "unknown") {
		t.Errorf("error %q does not say the outcome is unknown", a.body["error"])
	}
	ds.releaseAll() // the write, then the fence, reach the store
	var out string
	trellistest.Eventually(t, 10*time.Second, "write settled", func() error {
		g := callWrite(t, s, admin, "GET", "/v1/writes/"+key, "", nil)
		if g.code != http.StatusOK {
			return fmt.Errorf("GET /v1/writes: %d %v", g.code, g.body)
		}
		out = g.body["outcome"]
		return nil
	})
	if got := stored(t, ds.Store, "maybe"); got != (out == outcomeApplied) {
		t.Fatalf("write record says %s, but stored = %v", out, got)
	}
	// The retry: applied once, whatever happened before.
	r := callWrite(t, s, admin, "POST", "/v1/resources", key, service("maybe"))
	if r.code != http.StatusOK || !stored(t, ds.Store, "maybe") {
		t.Fatalf("retry with the same key: got %d %v, want applied", r.code, r.body)
	}
	kv, _ := ds.Store.Get(t.Context(), resourceKey(v1.KindService, "maybe"))
	r2 := callWrite(t, s, admin, "POST", "/v1/resources", key, service("maybe"))
	kv2, _ := ds.Store.Get(t.Context(), resourceKey(v1.KindService, "maybe"))
	if r2.code != http.StatusOK || kv2.Rev != kv.Rev {
		t.Errorf("second retry: got %d, revision %d -> %d; want 200 and no second write", r2.code, kv.Rev, kv2.Rev)
	}
	// The key names one write: another body under it is refused.
	if c := callWrite(t, s, admin, "POST", "/v1/resources", key, service("other")); c.code != http.StatusConflict {
		t.Errorf("same key, another write: got %d %v, want 409", c.code, c.body)
	}
}

// A write of unknown outcome is settled as soon as the server sees its
// store again, not at the end of a backoff that grew during the outage:
// the store may be back for less than that (TestHAEndToEnd saw a write
// left unsettled for good, its server restarted before its next try).
func TestWriteOfUnknownOutcomeSettlesWhenStoreReturns(t *testing.T) {
	s, ds, admin := newWriteServer(t)
	const key = "back-key-0123456789"
	ds.setHold(-1)
	release := sync.OnceFunc(ds.releaseAll)
	t.Cleanup(release)
	a := callWrite(t, s, admin, "POST", "/v1/resources", key, service("maybe"))
	if a.code != http.StatusServiceUnavailable || a.outcome != outcomeUnknown {
		t.Fatalf("got %d %q %v, want 503 unknown", a.code, a.outcome, a.body)
	}
	s.movers.set(func() { s.movers.storeLost = true }) // as watchStore would
	// The write and its fence, then two tries in the background: the
	// next is 4 s away.
	trellistest.Eventually(t, 20*time.Second, "two background tries", func() error {
		if n := ds.gaveUp.Load(); n < 4 {
			return fmt.Errorf("%d commits given up", n)
		}
		return nil
	})
	ds.stopHolding() // the store is back; the stuck copies stay stuck
	back := time.Now()
	s.movers.set(func() { s.movers.storeLost = false })
	trellistest.Eventually(t, 10*time.Second, "write settled", func() error {
		g := callWrite(t, s, admin, "GET", "/v1/writes/"+key, "", nil)
		if g.code != http.StatusOK || g.body["outcome"] != outcomeNotApplied {
			return fmt.Errorf("GET /v1/writes: %d %v", g.code, g.body)
		}
		return nil
	})
	if took := time.Since(back); took > 2*time.Second {
		t.Errorf("settled %v after the store came back, want within 2s", took.Round(time.Millisecond))
	}
	release() // the stuck copies arrive
	if stored(t, ds.Store, "maybe") {
		t.Error("a write settled as not applied was applied")
	}
}

// Deletes and tokens go through the same path.
func TestDeleteAndTokenWritesAreFenced(t *testing.T) {
	s, ds, admin := newWriteServer(t)
	if a := callWrite(t, s, admin, "POST", "/v1/resources", "", service("gone")); a.code != http.StatusOK {
		t.Fatalf("apply: %d %v", a.code, a.body)
	}
	ds.setHold(1)
	a := callWrite(t, s, admin, "DELETE", "/v1/resources/Service/gone", "", nil)
	if a.code != http.StatusServiceUnavailable || a.outcome != outcomeNotApplied {
		t.Fatalf("delete: got %d %q %v, want 503 not-applied", a.code, a.outcome, a.body)
	}
	ds.releaseAll()
	if !stored(t, ds.Store, "gone") {
		t.Fatal("a delete answered as not applied was applied later")
	}
	ds.setHold(1)
	a = callWrite(t, s, admin, "POST", "/v1/tokens", "", v1.TokenRequest{Services: []string{"web"}})
	if a.code != http.StatusServiceUnavailable || a.outcome != outcomeNotApplied {
		t.Fatalf("token: got %d %q %v, want 503 not-applied", a.code, a.outcome, a.body)
	}
	ds.releaseAll()
	kvs, _, err := ds.Store.List(t.Context(), keyTokens)
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != 1 {
		t.Fatalf("%d tokens stored, want only the admin's: a token answered as not made was stored later", len(kvs))
	}
}

func FuzzParseIdempotencyKey(f *testing.F) {
	for _, s := range []string{"retry-key-0123456789", "", "short", strings.Repeat("a", 129), "has space in it 0123", "0b1d3c5e-9f0a-4c2b-8d7e-6a5b4c3d2e1f", "ünïcode-key-0123456789"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		k, err := parseIdempotencyKey(v)
		if err != nil {
			if k != "" {
				t.Fatalf("error %v with key %q", err, k)
			}
			return
		}
		if k != v || len(k) < 16 || len(k) > 128 || strings.ContainsAny(k, " /%.\x00") {
			t.Fatalf("accepted %q as %q", v, k)
		}
		// An accepted key is safe in a store key and a URL path.
		if strings.Contains(writeRecordKey(k)[len(keyWrites):], "/") {
			t.Fatalf("key %q escapes its prefix", k)
		}
	})
}

// A write whose records' lease is gone (revoked, or a store restored from
// a backup taken before it) takes a new lease instead of failing for the
// hour the lease is kept.
func TestWriteAfterItsLeaseIsGone(t *testing.T) {
	s, ds, admin := newWriteServer(t)
	if a := callWrite(t, s, admin, "POST", "/v1/resources", "", service("first")); a.code != http.StatusOK {
		t.Fatalf("apply: %d %v", a.code, a.body)
	}
	if err := ds.Store.Revoke(t.Context(), s.writes.lease); err != nil {
		t.Fatal(err)
	}
	if a := callWrite(t, s, admin, "POST", "/v1/resources", "", service("second")); a.code != http.StatusOK || !stored(t, ds.Store, "second") {
		t.Fatalf("apply after the lease was revoked: %d %q %v, want applied", a.code, a.outcome, a.body)
	}
}
