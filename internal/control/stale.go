package control

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/trellis-mesh/trellis/internal/store"
)

// A server answers reads from its mirror of the store (state.go), which
// is behind when its watch is down or the store cannot be reached: cut
// off from etcd, or etcd without quorum. Such answers carry staleHeader,
// saying since when and why, and the CLI shows it.

const (
	// staleHeader is on every API answer given while the mirror may be
	// behind the store.
	staleHeader = "Trellis-Stale"
	// staleAfter is how long without word from the store makes the
	// mirror suspect: the probe asks every probeEvery.
	staleAfter = 3 * time.Second
	probeEvery = time.Second
)

// contact records that the store answered (a list, a watch batch, a
// probe).
func (s *state) contact(now time.Time) { s.lastContact.Store(now.UnixNano()) }

// storeFailed records why the store did not answer.
func (s *state) storeFailed(err error) {
	msg := err.Error()
	s.lastErr.Store(&msg)
}

// staleness says why the mirror may be behind the store, or "": with
// the store's error, for API answers to a token.
func (s *state) staleness(now time.Time) string {
	why := s.staleSince(now)
	if why == "" {
		return ""
	}
	detail := "no answer"
	if p := s.lastErr.Load(); p != nil {
		detail = *p
	}
	return fmt.Sprintf("%s (%s); answers may be stale", why, detail)
}

// staleSince says since when the mirror may be behind the store, or "",
// without the store's error: /healthz answers it to anyone, and the error
// names etcd's addresses, its TLS trouble or its login.
func (s *state) staleSince(now time.Time) string {
	last := s.lastContact.Load()
	if last == 0 {
		return "" // not started: nothing is served yet
	}
	since := time.Unix(0, last)
	switch {
	case !s.watching.Load():
		return "store watch down since " + since.UTC().Format(time.RFC3339)
	case now.Sub(since) > staleAfter:
		return fmt.Sprintf("store not reached for %s", now.Sub(since).Truncate(time.Second))
	}
	return ""
}

// probe asks the store for a linearizable read every probeEvery until ctx
// ends: a watch on a connection that went silent reports nothing, and
// under a loss of quorum only a read that needs the leader fails.
func (s *state) probe(ctx context.Context, st store.Store) {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(store.RequireLeader(ctx), staleAfter-probeEvery)
		_, err := st.Get(pctx, keyBundle)
		cancel()
		if err == nil || errors.Is(err, store.ErrNotFound) {
			s.contact(time.Now())
		} else if ctx.Err() == nil {
			s.storeFailed(err)
		}
	}
}
