package control

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/store"
)

// API writes have a deadline and a definite outcome.
//
// Every API write is one store transaction that also writes a record
// under /writes/<key>, guarded on that record: created if absent (or
// replacing an "aborted" one a retry names). When the store does not
// confirm the write in time, the server writes the record itself, as
// "aborted", under the same guard, before it answers: from then on the
// write's transaction can only fail its guard, wherever it is stuck (in a
// TCP send queue during a partition, or in a raft log during a loss of
// quorum: both were seen to apply writes answered as failed). So:
//
//   - applied: the transaction, or a retry with the same key, committed;
//   - not-applied: etcd refused it before its log (store.ErrNotApplied),
//     or the abort record was written first; it never applies later;
//   - unknown: the store answered neither within the deadline. The answer
//     says so and names the key; the server keeps trying to write the
//     abort record in the background, and a retry with the same
//     Idempotency-Key applies the write exactly once (it reads the record:
//     applied means done, aborted means try again under its revision).
//
// Records live for writeRecordTTL, under a lease shared by the writes of
// an hour: far longer than a stuck write can wait (TCP gives up within
// about 15 minutes; a raft entry commits, or is dropped, at the first
// election after quorum returns, before any later proposal).

// DefaultWriteTimeout bounds an API write: its transaction, and fencing it
// off when the store did not answer in time.
const DefaultWriteTimeout = 5 * time.Second

const (
	// writeRecordTTL is how long a write's record, and so its key's
	// idempotency, lasts.
	writeRecordTTL = 24 * time.Hour
	// writeLeaseEvery is how long one write-record lease is shared.
	writeLeaseEvery = time.Hour
	// maxSettling bounds the writes of unknown outcome settled in the
	// background at once; past it, a retry with the key settles them.
	maxSettling = 1000
	// idempotencyHeader names the client's key for a write.
	idempotencyHeader = "Idempotency-Key"
	// outcomeHeader is on every answer to a write: applied, not-applied or
	// unknown.
	outcomeHeader = "Trellis-Write-Outcome"
)

// Write outcomes, as answered.
const (
	outcomeApplied    = "applied"
	outcomeNotApplied = "not-applied"
	outcomeUnknown    = "unknown"
	// recordAborted is the record's state for a write fenced off.
	recordAborted = "aborted"
)

// writeRecord is what /writes/<key> holds.
type writeRecord struct {
	// Outcome is applied or aborted.
	Outcome string `json:"outcome"`
	// Digest is of the principal and the ops: a key names one write.
	Digest string    `json:"digest"`
	At     time.Time `json:"at"`
}

// writes holds the write-record lease and the background settling.
type writes struct {
	mu       sync.Mutex
	lease    store.LeaseID
	leaseAt  time.Time
	settling atomic.Int64
}

// parseIdempotencyKey checks a client's key: 16 to 128 characters of
// letters, digits, '-' and '_' (a UUID or base64url randomness).
func parseIdempotencyKey(v string) (string, error) {
	if len(v) < 16 || len(v) > 128 {
		return "", fmt.Errorf("%s: %d characters, want 16 to 128", idempotencyHeader, len(v))
	}
	for i, c := range []byte(v) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return "", fmt.Errorf("%s: character %d (%q) is not a letter, digit, '-' or '_'", idempotencyHeader, i+1, c)
		}
	}
	return v, nil
}

// writeKey returns the request's idempotency key, or a new one; given
// says the client named it (and may have tried it before).
func writeKey(r *http.Request) (key string, given bool, err error) {
	if v := r.Header.Get(idempotencyHeader); v != "" {
		k, err := parseIdempotencyKey(v)
		return k, true, err
	}
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		return "", false, fmt.Errorf("write key randomness: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), false, nil
}

// writeDigest names a write by who made it and what it writes.
func writeDigest(p principal, ops []store.Op) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", p.hash)
	for _, op := range ops {
		fmt.Fprintf(h, "%q %t %d %d\n", op.Key, op.Delete, op.IfRev, len(op.Value))
		h.Write(op.Value)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func writeRecordKey(key string) string { return keyWrites + key }

// writeFailed is the answer to a write that did not apply or whose
// outcome is unknown.
func writeFailed(outcome, key, format string, args ...any) error {
	return &apiError{status: http.StatusServiceUnavailable, msg: fmt.Sprintf(format, args...), outcome: outcome, writeKey: key}
}

// writeLease returns the lease this hour's write records go under.
func (s *Server) writeLease(ctx context.Context) (store.LeaseID, error) {
	s.writes.mu.Lock()
	defer s.writes.mu.Unlock()
	if s.writes.lease != 0 && time.Since(s.writes.leaseAt) < writeLeaseEvery {
		return s.writes.lease, nil
	}
	id, err := s.store.Grant(ctx, writeRecordTTL+writeLeaseEvery)
	if err != nil {
		return 0, err
	}
	s.writes.lease, s.writes.leaseAt = id, time.Now()
	return id, nil
}

// dropWriteLease forgets the records' lease if it is still id.
func (s *Server) dropWriteLease(id store.LeaseID) {
	s.writes.mu.Lock()
	defer s.writes.mu.Unlock()
	if s.writes.lease == id {
		s.writes.lease = 0
	}
}

// commitWrite commits ops as the request's write, within the request's
// deadline, and returns nil only when they were applied (now or by an
// earlier try with the same key). An error from the ops' own guards is
// store.ErrConflict; a write that failed is an *apiError saying whether
// it may still apply.
func (s *Server) commitWrite(r *http.Request, p principal, ops []store.Op) error {
	ctx := r.Context()
	key, given, err := writeKey(r)
	if err != nil {
		return badRequest("%v", err)
	}
	if len(ops)+1 > store.MaxTxnOps {
		return badRequest("nothing applied: %d writes in one request, over the limit of %d", len(ops), store.MaxTxnOps-1)
	}
	digest := writeDigest(p, ops)
	rkey := writeRecordKey(key)
	guard := int64(-1)
	if given {
		kv, err := s.store.Get(store.RequireLeader(ctx), rkey)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return writeFailed(outcomeNotApplied, key, "store unavailable, nothing applied: read the write's record: %v", err)
		default:
			var rec writeRecord
			if err := json.Unmarshal(kv.Value, &rec); err != nil {
				return fmt.Errorf("write record %s: %w", key, err)
			}
			if rec.Digest != digest {
				return &apiError{status: http.StatusConflict, msg: fmt.Sprintf("nothing applied: %s %q was used for another write", idempotencyHeader, key)}
			}
			if rec.Outcome == outcomeApplied {
				return nil
			}
			guard = kv.Rev // aborted: try again, under its revision
		}
	}
	lease, err := s.writeLease(ctx)
	if err != nil {
		return writeFailed(outcomeNotApplied, key, "store unavailable, nothing applied: %v", err)
	}
	applied, _ := json.Marshal(writeRecord{Outcome: outcomeApplied, Digest: digest, At: time.Now().UTC()})
	all := append(slices.Clip(ops), store.Op{Key: rkey, Value: applied, IfRev: guard, Lease: lease})

	// The transaction gets most of what is left of the deadline; fencing
	// it off gets the rest.
	budget := s.writeTimeout()
	if dl, ok := ctx.Deadline(); ok {
		budget = time.Until(dl)
	}
	tctx, cancel := context.WithTimeout(store.RequireLeader(ctx), budget*7/10)
	defer cancel()
	err = s.store.Commit(tctx, all)
	if errors.Is(err, store.ErrLeaseNotFound) {
		// The records' lease is gone (revoked, or the store restored from
		// a backup): nothing was applied; take a new one and try again.
		s.dropWriteLease(lease)
		if lease, err = s.writeLease(tctx); err != nil {
			return writeFailed(outcomeNotApplied, key, "store unavailable, nothing applied: %v", err)
		}
		all[len(all)-1].Lease = lease
		err = s.store.Commit(tctx, all)
	}
	cancel()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrConflict):
		if out, ok := s.readOutcome(ctx, rkey, digest); ok && out == outcomeApplied {
			return nil // a concurrent retry with the key applied it
		}
		return store.ErrConflict
	case errors.Is(err, store.ErrNotApplied):
		return writeFailed(outcomeNotApplied, key, "store unavailable, nothing applied: %v", err)
	}
	s.log.Warn("store did not confirm a write in time; fencing it off", "key", key, "err", err)
	out, ferr := s.fenceWrite(store.RequireLeader(ctx), rkey, guard, lease, digest)
	switch out {
	case outcomeApplied:
		return nil
	case outcomeNotApplied:
		return writeFailed(outcomeNotApplied, key, "store did not confirm the write within %v (%v); it was fenced off: nothing applied, nor will be", s.writeTimeout(), err)
	}
	s.settleInBackground(key, rkey, guard, lease, digest)
	return writeFailed(outcomeUnknown, key, "store did not answer within %v (%v; fencing: %v): the write's outcome is unknown until it does. "+
		"The server keeps fencing it off; retrying with the same %s (%s) is safe and applies it at most once", s.writeTimeout(), err, ferr, idempotencyHeader, key)
}

// fenceWrite writes the record as aborted, under the write's own guard,
// so that the write can never apply after; it returns the outcome now
// known, or unknown with the error.
func (s *Server) fenceWrite(ctx context.Context, rkey string, guard int64, lease store.LeaseID, digest string) (string, error) {
	aborted, _ := json.Marshal(writeRecord{Outcome: recordAborted, Digest: digest, At: time.Now().UTC()})
	err := s.store.Commit(ctx, []store.Op{{Key: rkey, Value: aborted, IfRev: guard, Lease: lease}})
	switch {
	case err == nil:
		return outcomeNotApplied, nil
	case errors.Is(err, store.ErrConflict):
		// The write got there first, or another fence did.
		if out, ok := s.readOutcome(ctx, rkey, digest); ok {
			return out, nil
		}
		return outcomeUnknown, errors.New("write record changed and unreadable")
	}
	return outcomeUnknown, err
}

// readOutcome reads a write's record: applied, or not-applied when
// aborted; ok is false when it cannot be read or is another write's.
func (s *Server) readOutcome(ctx context.Context, rkey, digest string) (string, bool) {
	kv, err := s.store.Get(ctx, rkey)
	if err != nil {
		return "", false
	}
	var rec writeRecord
	if json.Unmarshal(kv.Value, &rec) != nil || rec.Digest != digest {
		return "", false
	}
	if rec.Outcome == outcomeApplied {
		return outcomeApplied, true
	}
	return outcomeNotApplied, true
}

// settleInBackground keeps fencing off a write of unknown outcome until
// the store answers, so that it is settled (either way) as soon as the
// store is back, not whenever a stuck copy arrives. Between tries it
// backs off, but wakes when this server sees its store again: after a
// long outage the backoff is long, and the store may be back for less
// than that (the next outage, or a restart that ends this goroutine,
// would leave the write unsettled for good).
func (s *Server) settleInBackground(key, rkey string, guard int64, lease store.LeaseID, digest string) {
	if s.writes.settling.Add(1) > maxSettling {
		s.writes.settling.Add(-1)
		return
	}
	s.goBackground(func() {
		defer s.writes.settling.Add(-1)
		backoff := time.Second
		for s.bgCtx.Err() == nil {
			t := time.NewTimer(backoff)
			select {
			case <-s.bgCtx.Done():
			case <-t.C:
			case <-s.movers.returned():
				backoff = time.Second
			}
			t.Stop()
			if s.bgCtx.Err() != nil {
				return
			}
			ctx, cancel := context.WithTimeout(store.RequireLeader(s.bgCtx), s.writeTimeout())
			out, err := s.fenceWrite(ctx, rkey, guard, lease, digest)
			cancel()
			if out != outcomeUnknown {
				s.log.Info("write of unknown outcome settled", "key", key, "outcome", out)
				return
			}
			s.log.Debug("settle write", "key", key, "err", err)
			backoff = min(backoff*2, 30*time.Second)
		}
	})
}

// getWrite answers what became of a write, by its key.
func (s *Server) getWrite(_ principal, r *http.Request) (any, error) {
	key, err := parseIdempotencyKey(r.PathValue("key"))
	if err != nil {
		return nil, badRequest("%v", err)
	}
	kv, err := s.store.Get(r.Context(), writeRecordKey(key))
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("no write with key %q in the last %v (or its outcome is still unknown)", key, writeRecordTTL)
	}
	if err != nil {
		return nil, err
	}
	var rec writeRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, fmt.Errorf("write record %s: %w", key, err)
	}
	out := outcomeApplied
	if rec.Outcome != outcomeApplied {
		out = outcomeNotApplied
	}
	return map[string]any{"key": key, "outcome": out, "at": rec.At}, nil
}

// writeTimeout is the configured deadline of a write, or the default for
// a server not made by New.
func (s *Server) writeTimeout() time.Duration {
	if s.cfg.WriteTimeout > 0 {
		return s.cfg.WriteTimeout
	}
	return DefaultWriteTimeout
}
