package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdConfig says how to reach etcd.
type EtcdConfig struct {
	// Endpoints are etcd client URLs, such as http://127.0.0.1:2379.
	Endpoints []string
	// TLS, when set, is used to reach the endpoints, which must then be
	// https URLs; https URLs without it use the system's roots. See
	// ClientTLS for one made from files.
	TLS *tls.Config
	// Username and Password log in to an etcd with authentication enabled
	// (etcd's users and roles). Both or neither. Password is a secret: it is
	// never logged or put in an error.
	Username, Password string
	// DialTimeout bounds the first connection; zero means 5s.
	DialTimeout time.Duration
	// Prefix is put before every key, so that one etcd can hold several
	// meshes; empty means "/trellis".
	Prefix string
}

// Etcd is a Store on the etcd v3 API.
type Etcd struct {
	c      *clientv3.Client
	prefix string
	keeper keeper // Hold's (keeper.go)
}

var _ Store = (*Etcd)(nil)

// NewEtcd connects to etcd and checks that it answers.
func NewEtcd(ctx context.Context, cfg EtcdConfig) (*Etcd, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/trellis"
	}
	if cfg.TLS == nil && strings.HasPrefix(cfg.Endpoints[0], "https://") {
		cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		Username:    cfg.Username,
		Password:    cfg.Password,
		DialTimeout: cfg.DialTimeout,
		// Pings find a connection that went silent (a partition drops
		// packets without a reset), so that the client moves to another
		// endpoint instead of waiting on TCP's retransmissions for
		// minutes. Not under 5s: etcd's default --grpc-keepalive-min-time
		// answers pings that come more often with GOAWAY.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, cfg.explain(ctx, err)
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := c.Get(pctx, cfg.Prefix+"/", clientv3.WithCountOnly()); err != nil {
		c.Close()
		return nil, cfg.explain(ctx, err)
	}
	e := &Etcd{c: c, prefix: cfg.Prefix}
	e.keeper.c = c
	return e, nil
}

func (e *Etcd) kv(k *mvccpb.KeyValue) KV {
	return KV{Key: string(k.Key[len(e.prefix):]), Value: k.Value, Rev: k.ModRevision}
}

// Get implements Store.
func (e *Etcd) Get(ctx context.Context, key string) (KV, error) {
	r, err := e.c.Get(ctx, e.prefix+key)
	if err != nil {
		return KV{}, fmt.Errorf("get %s: %w", key, err)
	}
	if len(r.Kvs) == 0 {
		return KV{}, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	return e.kv(r.Kvs[0]), nil
}

// List implements Store.
func (e *Etcd) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	r, err := e.c.Get(ctx, e.prefix+prefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", prefix, err)
	}
	out := make([]KV, len(r.Kvs))
	for i, k := range r.Kvs {
		out[i] = e.kv(k)
	}
	return out, r.Header.Revision, nil
}

// Put implements Store.
func (e *Etcd) Put(ctx context.Context, key string, value []byte, lease LeaseID) error {
	var opts []clientv3.OpOption
	if lease != 0 {
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(lease)))
	}
	if _, err := e.c.Put(ctx, e.prefix+key, string(value), opts...); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// Create implements Store.
func (e *Etcd) Create(ctx context.Context, key string, value []byte) error {
	err := e.Commit(ctx, []Op{{Key: key, Value: value, IfRev: -1}})
	if errors.Is(err, ErrConflict) {
		return fmt.Errorf("create %s: %w", key, ErrExists)
	}
	return err
}

// Delete implements Store.
func (e *Etcd) Delete(ctx context.Context, key string) error {
	r, err := e.c.Delete(ctx, e.prefix+key)
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if r.Deleted == 0 {
		return fmt.Errorf("delete %s: %w", key, ErrNotFound)
	}
	return nil
}

// Commit implements Store.
func (e *Etcd) Commit(ctx context.Context, ops []Op) error {
	if len(ops) > MaxTxnOps {
		return fmt.Errorf("commit %d writes: over the limit of %d in one transaction", len(ops), MaxTxnOps)
	}
	var (
		cmps []clientv3.Cmp
		then []clientv3.Op
	)
	for _, op := range ops {
		k := e.prefix + op.Key
		switch {
		case op.IfRev == -1:
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		case op.IfRev > 0:
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", op.IfRev))
		}
		switch {
		case op.Check:
		case op.Delete:
			then = append(then, clientv3.OpDelete(k))
		case op.Lease != 0:
			then = append(then, clientv3.OpPut(k, string(op.Value), clientv3.WithLease(clientv3.LeaseID(op.Lease))))
		default:
			then = append(then, clientv3.OpPut(k, string(op.Value)))
		}
	}
	r, err := e.c.Txn(ctx).If(cmps...).Then(then...).Commit()
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("commit %d ops: %w: %w", len(ops), ErrNotApplied, ErrLeaseNotFound)
		}
		if refusedWrite(err) {
			return fmt.Errorf("commit %d ops: %w: %w", len(ops), ErrNotApplied, err)
		}
		return fmt.Errorf("commit %d ops: %w", len(ops), err)
	}
	if !r.Succeeded {
		return ErrConflict
	}
	return nil
}

// RequireLeader returns a context under which a write fails at once, with
// ErrNotApplied, when the etcd member the client talks to has no leader
// (etcd checks it before the request goes further): without it, a write
// during a loss of quorum waits for its deadline and its outcome is
// unknown. Reads under it fail the same way instead of waiting.
func RequireLeader(ctx context.Context) context.Context {
	return clientv3.WithRequireLeader(ctx)
}

// refusedWrite reports whether a write's error proves that etcd refused
// it before proposing it to its raft log: etcd returns these from its
// request interceptor or before Propose (etcdserver's
// processInternalRaftRequestOnce), never after. Everything else, timeouts
// above all, leaves the outcome open: a proposal forwarded to a leader, or
// bytes still in a TCP send queue, may be applied later.
func refusedWrite(err error) bool {
	for _, e := range []error{
		rpctypes.ErrNoLeader,
		rpctypes.ErrTooManyRequests,
		rpctypes.ErrRequestTooLarge,
		rpctypes.ErrTooManyOps,
		rpctypes.ErrDuplicateKey,
		rpctypes.ErrPermissionDenied,
		rpctypes.ErrInvalidAuthToken,
		rpctypes.ErrAuthOldRevision,
		rpctypes.ErrUserEmpty,
		rpctypes.ErrAuthFailed,
		rpctypes.ErrNotCapable,
		// A txn naming a lost lease fails as a whole where it is applied.
		rpctypes.ErrLeaseNotFound,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Watch implements Store.
func (e *Etcd) Watch(ctx context.Context, prefix string, rev int64) <-chan WatchBatch {
	out := make(chan WatchBatch)
	go func() {
		defer close(out)
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		defer cancel()
		wc := e.c.Watch(wctx, e.prefix+prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for resp := range wc {
			b := WatchBatch{Rev: resp.Header.Revision}
			if err := resp.Err(); err != nil {
				b.Err = fmt.Errorf("watch %s: %w", prefix, err)
			}
			for _, ev := range resp.Events {
				t := Put
				if ev.Type == clientv3.EventTypeDelete {
					t = Delete
				}
				b.Events = append(b.Events, Event{Type: t, KV: e.kv(ev.Kv)})
			}
			select {
			case out <- b:
			case <-ctx.Done():
				return
			}
			if b.Err != nil {
				return
			}
		}
		if ctx.Err() == nil {
			select {
			case out <- WatchBatch{Err: fmt.Errorf("watch %s: closed", prefix)}:
			case <-ctx.Done():
			}
		}
	}()
	return out
}

// Grant implements Store.
func (e *Etcd) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	secs := int64(ttl / time.Second)
	if secs < 1 {
		secs = 1
	}
	r, err := e.c.Grant(ctx, secs)
	if err != nil {
		if refusedWrite(err) {
			// Retried by callers that back off when the store is
			// overloaded; a grant of unknown outcome only leaves a
			// lease that expires unused.
			return 0, fmt.Errorf("grant lease: %w: %w", ErrNotApplied, err)
		}
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	return LeaseID(r.ID), nil
}

// leaseCheckTimeout bounds the question whether a lease still stands
// (KeepAlive).
const leaseCheckTimeout = 10 * time.Second

// KeepAlive implements Store.
//
// The etcd client gives up on a lease, closing its channel, when no
// answer to its keep-alives came within the lease's TTL, and for a new
// lease within its dial timeout plus 1 s (6 s). etcd answers one
// client's keep-alives in turn, so with thousands of leases on one busy
// server the first answer for a new one can take longer than that:
// leases that stood were taken for lost, and their proxies reconnected.
// So when the client gives up, etcd is asked whether the lease stands
// (its remaining TTL); it is lost only if etcd says it is gone, or does
// not answer within leaseCheckTimeout.
func (e *Etcd) KeepAlive(ctx context.Context, id LeaseID) error {
	for {
		began := time.Now()
		ch, err := e.c.KeepAlive(ctx, clientv3.LeaseID(id))
		if err != nil {
			return fmt.Errorf("keep lease %x alive: %w", id, err)
		}
		for range ch {
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		cctx, cancel := context.WithTimeout(ctx, leaseCheckTimeout)
		r, err := e.c.TimeToLive(cctx, clientv3.LeaseID(id))
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			return fmt.Errorf("lease %x lost: no keep-alive answered, and: %w", id, err)
		case r.TTL <= 0:
			return fmt.Errorf("lease %x lost", id)
		}
		if time.Since(began) < time.Second {
			// Given up on at once, yet standing: do not spin.
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
	}
}

// Revoke implements Store.
func (e *Etcd) Revoke(ctx context.Context, id LeaseID) error {
	if _, err := e.c.Revoke(ctx, clientv3.LeaseID(id)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("revoke lease %x: %w", id, err)
	}
	return nil
}

// Close implements Store.
func (e *Etcd) Close() error {
	e.keeper.close()
	return e.c.Close()
}
