package control

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/store"
)

// An instance's registration outlives the server that held its stream.
//
// Each instance has its own lease, granted by the server that first took
// its stream, and a registration record under it (keyRegistrations) that
// names the lease, the stream holding it, and the hash of the proxy's
// claim. When the stream moves (its server crashed, was cut off, or shut
// down), the server that takes the proxy's next stream adopts the same
// lease if the proxy shows the same claim: the instance never leaves the
// store. Nobody keeps the lease alive between the two streams, so the
// instance outlives its server by at most Config.RegistrationGrace.
//
// Only the stream holding the record writes the instance and its status:
// every write is guarded by the record's revision, so a server that lost
// the proxy to another (a partition it did not notice) cannot write over
// the new holder's records or deregister the instance. A guarded write
// that fails ends that server's stream.

// registrationRecord is what keyRegistrations holds, under the instance's
// lease. It holds no secret: the claim only as a hash.
type registrationRecord struct {
	Lease store.LeaseID `json:"lease"`
	// Claim is the SHA-256 (hex) of the proxy's claim; empty from proxies
	// that send none, whose registrations are never adopted.
	Claim string `json:"claim,omitempty"`
	// Token is the public ID of the token that registered the stream.
	Token string `json:"token"`
	// Server is the ID of the server holding the stream; Holder names the
	// stream itself.
	Server string `json:"server"`
	Holder string `json:"holder"`
}

var (
	// errInstanceHeld: a live registration of the instance was made by
	// another proxy (another claim, or none).
	errInstanceHeld = errors.New("instance is registered by another proxy; retry once its registration ends")
	// errRegistrationMoved: another stream took the registration over, or
	// its lease ended.
	errRegistrationMoved = errors.New("registration taken over by another stream, or expired")
)

func claimHash(claim string) string {
	if claim == "" {
		return ""
	}
	h := sha256.Sum256([]byte(claim))
	return hex.EncodeToString(h[:])
}

// mayAdopt reports whether a stream that shows claim may take rec over.
// The token's right to the service is checked before, and the record is
// found by service and instance: a claim never reaches another instance's
// lease.
func (rec registrationRecord) mayAdopt(claim string) bool {
	if claim == "" || rec.Claim == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(rec.Claim), []byte(claimHash(claim))) == 1
}

func newHolderID(server string) string {
	var b [8]byte
	rand.Read(b[:])
	return server + "/" + hex.EncodeToString(b[:])
}

// register takes the instance's registration: it adopts the live lease of
// the same proxy's earlier stream, or grants a new one, and writes the
// record, the instance and the first status in one commit.
func (ps *proxyStream) register(ctx context.Context, token string) error {
	s := ps.s
	ps.status = v1.ProxyStatus{
		Instance: ps.reg.Instance, Service: ps.reg.Service, Server: s.cfg.Listen, ConnectedAt: time.Now().UTC(),
		Network: v1.EffectiveNetwork(ps.reg.Network),
	}
	ps.setNodeInfo(ps.reg.NodeInfo)
	ps.holder = newHolderID(s.id)
	key := registrationKey(ps.reg.Service, ps.reg.Instance)
	var last error
	// A few rounds: each lost one means the record changed between the
	// read and the commit (another stream of the same proxy, or expiry).
	for range 4 {
		kv, err := s.store.Get(ctx, key)
		var guard int64
		var lease store.LeaseID
		switch {
		case errors.Is(err, store.ErrNotFound):
			if lease, err = s.store.Grant(ctx, s.cfg.RegistrationGrace); err != nil {
				return err
			}
			guard = -1
		case err != nil:
			return err
		default:
			var rec registrationRecord
			if err := json.Unmarshal(kv.Value, &rec); err != nil || !rec.mayAdopt(ps.reg.Claim) {
				return errInstanceHeld
			}
			lease, guard = rec.Lease, kv.Rev
		}
		rec, _ := json.Marshal(registrationRecord{
			Lease: lease, Claim: claimHash(ps.reg.Claim), Token: token, Server: s.id, Holder: ps.holder,
		})
		status, _ := json.Marshal(ps.status)
		ops := append([]store.Op{{Key: key, Value: rec, Lease: lease, IfRev: guard}}, ps.instanceOps(lease)...)
		ops = append(ops, store.Op{Key: statusKey(ps.reg.Service, ps.reg.Instance), Value: status, Lease: lease})
		err = s.store.Commit(ctx, ops)
		if err == nil {
			ps.lease, ps.adopted = lease, guard > 0
			ps.statusWritten(ps.status)
			return ps.learnRev(ctx)
		}
		if guard == -1 {
			// Nothing of this stream's is under it.
			_ = s.store.Revoke(context.WithoutCancel(ctx), lease)
		}
		// A conflict, or (adopting) a lease that ended between the read
		// and the commit: read again.
		if !errors.Is(err, store.ErrConflict) && guard == -1 {
			return err
		}
		last = err
	}
	return fmt.Errorf("registration of %s/%s kept changing: %w", ps.reg.Service, ps.reg.Instance, last)
}

// learnRev reads back the registration record just written, for the
// guard of this stream's later writes.
func (ps *proxyStream) learnRev(ctx context.Context) error {
	kv, err := ps.s.store.Get(ctx, registrationKey(ps.reg.Service, ps.reg.Instance))
	if err != nil {
		return fmt.Errorf("read back registration: %w", err)
	}
	var rec registrationRecord
	if json.Unmarshal(kv.Value, &rec) != nil || rec.Holder != ps.holder {
		return errRegistrationMoved
	}
	ps.regRev = kv.Rev
	return nil
}

// instanceOps write the instance under lease, and remember it without one
// (warmup.go).
func (ps *proxyStream) instanceOps(lease store.LeaseID) []store.Op {
	in := v1.Instance{
		ID: ps.reg.Instance, Service: ps.reg.Service, Version: ps.reg.Version,
		Address: ps.reg.Address, Port: ps.reg.Port, EdgePort: ps.reg.EdgePort, Network: v1.EffectiveNetwork(ps.reg.Network),
		Healthy: ps.reg.Healthy, RegisteredAt: ps.status.ConnectedAt,
	}
	b, _ := json.Marshal(in)
	return []store.Op{
		{Key: instanceKey(in.Service, in.ID), Value: b, Lease: lease},
		{Key: rememberedKey(in.Service, in.ID), Value: b},
	}
}

// commitHeld commits ops while this stream holds the registration. A
// conflict means it does not any more: the stream's lease watch ends the
// stream.
func (ps *proxyStream) commitHeld(ctx context.Context, ops []store.Op) error {
	guard := store.Op{Key: registrationKey(ps.reg.Service, ps.reg.Instance), IfRev: ps.regRev, Check: true}
	err := ps.s.store.Commit(ctx, append([]store.Op{guard}, ops...))
	if errors.Is(err, store.ErrConflict) {
		ps.lose(errRegistrationMoved)
		return errRegistrationMoved
	}
	return err
}

// lose ends the stream's hold on the registration: its keep-alive stops
// and the stream ends, leaving the lease to whoever holds it now.
func (ps *proxyStream) lose(cause error) {
	ps.moved.Store(true)
	if ps.stopLease != nil {
		ps.stopLease(cause)
	}
}

// unregister deletes the instance's records and ends its lease, if this
// stream still holds them.
func (ps *proxyStream) unregister(ctx context.Context) error {
	svc, id := ps.reg.Service, ps.reg.Instance
	err := ps.commitHeld(ctx, []store.Op{
		{Key: registrationKey(svc, id), Delete: true},
		{Key: instanceKey(svc, id), Delete: true},
		{Key: statusKey(svc, id), Delete: true},
		{Key: rememberedKey(svc, id), Delete: true},
	})
	if err != nil {
		return err
	}
	// The records are gone, so no stream can adopt the lease any more.
	return ps.s.store.Revoke(ctx, ps.lease)
}
