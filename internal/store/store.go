package store

import (
	"context"
	"errors"
	"time"
)

// Errors.
var (
	ErrNotFound = errors.New("key not found")
	ErrExists   = errors.New("key already exists")
	ErrConflict = errors.New("commit conflict: a key changed since it was read")
	// ErrNotApplied wraps a write's error when the error proves that the
	// store refused the write before it could enter its log (no leader,
	// too many requests, too large, not permitted): such a write is never
	// applied later and may be retried. A write error that does not wrap
	// it (a timeout, a lost connection) is of unknown outcome: the write
	// may still be applied, seconds or minutes later.
	ErrNotApplied = errors.New("the store refused the write; nothing was applied")
	// ErrLeaseNotFound wraps a commit's error (with ErrNotApplied) when
	// an op names a lease the store no longer has.
	ErrLeaseNotFound = errors.New("lease not found")
)

// KV is one key and its value. Rev is the store revision that last modified it.
type KV struct {
	Key   string
	Value []byte
	Rev   int64
}

// EventType says what happened to a key.
type EventType int

// Event types.
const (
	Put EventType = iota
	Delete
)

// Event is one change seen by a watch. For Delete, KV.Value is empty.
type Event struct {
	Type EventType
	KV   KV
}

// WatchBatch is what a watch delivers: the events of one store revision, or
// an error after which the watch has ended and the watcher must List again.
type WatchBatch struct {
	Events []Event
	Rev    int64
	Err    error
}

// MaxTxnOps is the most ops one Commit may hold: etcd's default
// --max-txn-ops, which an external cluster is likely to keep.
const MaxTxnOps = 128

// Op is one write in an atomic Commit.
type Op struct {
	Key    string
	Value  []byte // nil with Delete set
	Delete bool
	// IfRev, when non-zero, makes the commit fail with ErrConflict unless the
	// key's mod revision is IfRev; -1 means the key must not exist.
	IfRev int64

	// Lease, when non-zero, puts the key under the lease: a lock that
	// vanishes with its holder is a Create under a lease, in one commit.
	Lease LeaseID

	// Check makes the op a precondition only (IfRev on Key) that writes
	// nothing: "write these keys while that one is unchanged".
	Check bool
}

// LeaseID names a lease; keys put under it vanish when it expires.
type LeaseID int64

// Store is the interface the control plane needs. Implementations are safe
// for concurrent use.
type Store interface {
	// Get returns the key, or ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)
	// List returns every key under prefix, sorted, and the revision read at.
	List(ctx context.Context, prefix string) ([]KV, int64, error)
	// Put writes the key; with a non-zero lease, the key lives as long as it.
	Put(ctx context.Context, key string, value []byte, lease LeaseID) error
	// Create writes the key only if it does not exist, else ErrExists.
	Create(ctx context.Context, key string, value []byte) error
	// Delete removes the key, or returns ErrNotFound.
	Delete(ctx context.Context, key string) error
	// Commit applies every op or none; at most MaxTxnOps of them. Under a
	// context from RequireLeader, it fails at once, with ErrNotApplied,
	// when the store has no leader.
	Commit(ctx context.Context, ops []Op) error
	// Watch delivers the changes under prefix after revision rev until ctx
	// ends; the channel is closed then, or after a batch with Err.
	Watch(ctx context.Context, prefix string, rev int64) <-chan WatchBatch
	// Grant creates a lease that expires ttl after its last keep-alive.
	Grant(ctx context.Context, ttl time.Duration) (LeaseID, error)
	// KeepAlive renews the lease until ctx ends; it returns when the lease is
	// lost (expired or revoked) or ctx ends.
	KeepAlive(ctx context.Context, id LeaseID) error
	// Hold keeps the lease alive, with every other lease held, until
	// release is called; lost is called once (without blocking) if the
	// lease is lost before that. For callers that hold many leases at once: it costs no
	// goroutine per lease.
	Hold(id LeaseID, ttl time.Duration, lost func(error)) (release func())
	// Revoke ends the lease now, deleting its keys.
	Revoke(ctx context.Context, id LeaseID) error
	// Close releases the client.
	Close() error
}
