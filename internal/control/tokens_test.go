package control

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/store"
)

func tokenFor(service string) v1.Token { return v1.Token{Services: []string{service}} }

// countingStore counts the reads that reach the real store.
type countingStore struct {
	store.Store
	gets atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, key string) (store.KV, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, key)
}

// Guessed secrets must not each cost a store read: past a small budget,
// an unknown token is looked up in the store's mirror only, and a real
// token made a moment ago is still found: in the store within the budget,
// and past it in the mirror, which is waited for a little.
func TestUnknownTokensReadTheStoreWithinABudget(t *testing.T) {
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
	cs := &countingStore{Store: st}
	log := slog.New(slog.DiscardHandler)
	const budget = 5
	s := &Server{log: log, store: cs, state: newState(log), storeLookups: rate.NewLimiter(rate.Every(time.Hour), budget), usedWrites: map[string]time.Time{}, bgCtx: ctx}

	secret, _, err := createToken(ctx, st.Commit, tokenFor("web"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.authenticate(ctx, secret); err != nil {
		t.Fatalf("a token made a moment ago, not yet in the mirror: %v", err)
	}
	for range 20 {
		guess, _, _ := newSecret()
		if _, err := s.authenticate(ctx, guess); err == nil {
			t.Fatal("a guessed token was accepted")
		}
	}
	if n := cs.gets.Load(); n > budget {
		t.Errorf("20 guessed tokens and a real one made %d store reads, want at most the budget of %d", n, budget)
	}
	// Past the budget, a new token is found in the mirror.
	go s.state.run(ctx, st)
	<-s.state.ready
	fresh, _, err := createToken(ctx, st.Commit, tokenFor("db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.authenticate(ctx, fresh); err != nil {
		t.Fatalf("a token made past the budget: %v", err)
	}
	s.bg.Wait()
}
