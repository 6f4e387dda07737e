package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/store"
)

// A root rotation, in three steps that each survive a server's restart
// and reach every server through the store:
//
//  1. prepare: one server makes the new root and its key, cross-signs the
//     key with the current CA, stores both (keyIssuer) and adds the new
//     root to the trust bundle. The old key still signs.
//  2. switch, once every connected proxy has applied a snapshot that
//     trusts the new root: every server signs with the new key, and its
//     leaves carry the cross-signed certificate, so that a peer that
//     still holds only the old root verifies them too.
//  3. retire, once every certificate the old key signed has expired: the
//     old root leaves the bundle (proxies then close connections that
//     only it verified) and the new root signs alone.
//
// The new key is kept in the store, as Consul's built-in CA keeps its key
// in its Raft store, sealed with the store secret (sharedca.go): every
// server must sign with it. The switch and the retirement rewrite the
// shared CA (keySigner) in the same commit as the record, and every
// server follows that. An imported CA is rotated at its source instead:
// add the new root with `ca add-root`, restart one server with the new
// --ca-cert/--ca-key (the others follow it), and remove the old root with
// `ca remove-root`.

// issuerRecord is what keyIssuer holds.
type issuerRecord struct {
	Phase    string `json:"phase"`
	RootPEM  string `json:"rootPEM"`
	CrossPEM string `json:"crossPEM,omitempty"` // dropped at retirement
	// KeySealed is the new key (PEM), sealed with the store secret for
	// keyIssuer.
	KeySealed string `json:"keySealed,omitempty"`
	// KeyPEM is the new key in clear, as versions before the shared CA
	// stored it; sealed (and emptied) at the first start of this one.
	KeyPEM        string    `json:"keyPEM,omitempty"`
	OldRootPEM    string    `json:"oldRootPEM"`
	StartedAt     time.Time `json:"startedAt"`
	SwitchedAt    time.Time `json:"switchedAt,omitzero"`
	OldSVIDsUntil time.Time `json:"oldSVIDsUntil,omitzero"`

	rev int64
}

// switchMargin covers the moment between one server's switch and the
// others' (each sees it through its store watch) and clocks that differ a
// little: the old key may sign for that long after SwitchedAt.
const switchMargin = 10 * time.Second

// writeFileAtomic replaces name with b, whole or not at all, and durably:
// the bytes reach the disk before the rename, and the rename before it
// returns, so that a crash leaves the old file or the new one, never a
// truncated key.
func writeFileAtomic(name string, b []byte, mode os.FileMode) error {
	tmp := name + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(filepath.Dir(name))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// rotation reports where the rotation stands, with the proxies that do not
// trust the new root yet.
func (s *Server) rotation(principal, *http.Request) (any, error) {
	return s.rotationStatus(s.state.issuerRecord()), nil
}

func (s *Server) rotationStatus(rec *issuerRecord) v1.Rotation {
	var out v1.Rotation
	if rec == nil {
		return out
	}
	out.Phase = rec.Phase
	out.NewRoot = certs.Fingerprints([]byte(rec.RootPEM))[0]
	if old := certs.Fingerprints([]byte(rec.OldRootPEM)); len(old) > 0 {
		out.OldRoot = old[0]
	}
	out.StartedAt = &rec.StartedAt
	if !rec.SwitchedAt.IsZero() {
		out.SwitchedAt, out.OldSVIDsUntil = &rec.SwitchedAt, &rec.OldSVIDsUntil
	}
	for _, ps := range s.state.listStatus() {
		out.Proxies++
		if slices.Contains(ps.AckedRoots, out.NewRoot) {
			out.Trusting++
		} else {
			out.Waiting = append(out.Waiting, ps.Service+"/"+ps.Instance)
		}
	}
	return out
}

func (s *Server) rotate(_ principal, r *http.Request) (any, error) {
	var req v1.RotationRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	skv, err := s.store.Get(r.Context(), keySigner)
	if err != nil {
		return nil, fmt.Errorf("read the shared CA: %w", err)
	}
	signer, err := decodeSigner(skv)
	if err != nil {
		return nil, err
	}
	if signer.Imported {
		return nil, badRequest("the servers share an imported CA (--ca-cert), which Trellis does not rotate: rotate it at its source, " +
			"then `trellis ca add-root NEW.pem`, wait until `trellis get proxies` shows every proxy on the new version, " +
			"restart one server with the new --ca-cert and --ca-key (the others follow it through the store), " +
			"and `trellis ca remove-root OLD` once the old certificates have expired")
	}
	kv, err := s.store.Get(r.Context(), keyIssuer)
	var rec issuerRecord
	switch {
	case errors.Is(err, store.ErrNotFound):
		kv.Rev = -1 // create
	case err != nil:
		return nil, err
	default:
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("decode issuer record: %w", err)
		}
	}
	now := time.Now().UTC()
	switch req.Action {
	case "prepare":
		if rec.Phase == v1.RotationPrepared || rec.Phase == v1.RotationActive {
			return nil, &apiError{status: http.StatusConflict, msg: fmt.Sprintf("a rotation is already %s; finish it first (trellis ca rotate resumes it)", rec.Phase)}
		}
		cur := s.signer()
		next, err := cur.Rotate(now)
		if err != nil {
			return nil, badRequest("rotate: %v", err)
		}
		rec = issuerRecord{
			Phase: v1.RotationPrepared, RootPEM: string(next.RootPEM), CrossPEM: string(next.CrossPEM),
			KeySealed: s.sealer.Seal(keyIssuer, next.KeyPEM), OldRootPEM: string(cur.RootsPEM()), StartedAt: now,
		}
		// Stored before the bundle grows: a server that stops in between
		// leaves a record that a retry finds, never a root nobody holds
		// the key of.
		if err := s.commitRotation(r.Context(), s.issuerOp(rec, kv.Rev)); err != nil {
			return nil, err
		}
		if err := addRoots(r.Context(), s.store, cur.TrustDomain(), next.RootPEM); err != nil {
			return nil, fmt.Errorf("add the new root to the bundle: %w", err)
		}
		s.log.Info("root rotation prepared", "newRoot", certs.Fingerprints(next.RootPEM)[0])
	case "switch":
		if rec.Phase != v1.RotationPrepared {
			return nil, &apiError{status: http.StatusConflict, msg: fmt.Sprintf("nothing to switch: the rotation is %q (prepare first)", rec.Phase)}
		}
		if st := s.rotationStatus(&rec); len(st.Waiting) > 0 && !req.Force {
			return nil, &apiError{status: http.StatusConflict, msg: fmt.Sprintf("%d of %d proxies do not trust the new root yet: %s", len(st.Waiting), st.Proxies, strings.Join(st.Waiting, ", "))}
		}
		rec.Phase, rec.SwitchedAt = v1.RotationActive, now
		rec.OldSVIDsUntil = now.Add(s.cfg.SVIDTTL + switchMargin)
		// Every server signs with the new key from this commit on: they
		// follow the shared CA.
		next, err := s.rotatedSigner(rec, true)
		if err != nil {
			return nil, err
		}
		if err := s.commitRotation(r.Context(), s.issuerOp(rec, kv.Rev), s.putSignerOp(next, skv.Rev)); err != nil {
			return nil, err
		}
		s.log.Info("root rotation switched: the new key signs", "oldRootRemovableAt", rec.OldSVIDsUntil)
	default:
		return nil, badRequest("action %q: want prepare or switch", req.Action)
	}
	return s.rotationStatus(&rec), nil
}

func (s *Server) issuerOp(rec issuerRecord, rev int64) store.Op {
	b, _ := json.Marshal(rec)
	return store.Op{Key: keyIssuer, Value: b, IfRev: rev}
}

// rotatedSigner is the shared CA a rotation's new key makes: with the
// cross-signed certificate after the switch (cross), alone after the
// retirement. It is loaded once here, so that a record no server could
// sign with is never stored.
func (s *Server) rotatedSigner(rec issuerRecord, cross bool) (signerRecord, error) {
	keyPEM, err := s.sealer.Open(keyIssuer, rec.KeySealed)
	if err != nil {
		return signerRecord{}, fmt.Errorf("open the rotation's key: %w", err)
	}
	next := signerRecord{CertPEM: rec.RootPEM, KeySealed: s.sealer.Seal(keySigner, keyPEM), Source: "rotated", UpdatedAt: time.Now().UTC()}
	if cross {
		next.CertPEM, next.RootPEM = rec.CrossPEM, rec.RootPEM
	}
	next.TrustDomain = s.cfg.TrustDomain
	if _, err := next.load(s.cfg.TrustDomain, keyPEM); err != nil {
		return signerRecord{}, fmt.Errorf("load the rotated CA: %w", err)
	}
	return next, nil
}

func (s *Server) commitRotation(ctx context.Context, ops ...store.Op) error {
	err := s.store.Commit(ctx, ops)
	if errors.Is(err, store.ErrConflict) {
		return &apiError{status: http.StatusConflict, msg: "another rotation step ran at the same time; look again"}
	}
	return err
}

// removeRoot takes a root out of the trust bundle: a rotation's old root
// once its certificates have expired, or a root added by hand.
func (s *Server) removeRoot(_ principal, r *http.Request) (any, error) {
	var req v1.RemoveRootRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	fp := strings.ToLower(strings.TrimSpace(req.Fingerprint))
	if len(fp) < 8 {
		return nil, badRequest("fingerprint %q: give at least 8 hex characters (trellis ca roots lists them)", req.Fingerprint)
	}
	ctx := r.Context()
	bkv, err := s.store.Get(ctx, keyBundle)
	if err != nil {
		return nil, err
	}
	var bundle bundleRecord
	if err := json.Unmarshal(bkv.Value, &bundle); err != nil {
		return nil, fmt.Errorf("decode trust bundle: %w", err)
	}
	roots, err := ca.ParseCertificates([]byte(bundle.RootsPEM))
	if err != nil {
		return nil, err
	}
	idx := -1
	for i, c := range roots {
		if strings.HasPrefix(certs.Fingerprint(c), fp) {
			if idx >= 0 {
				return nil, badRequest("fingerprint %q matches more than one root; give more of it", fp)
			}
			idx = i
		}
	}
	if idx < 0 {
		return nil, notFound("no root in the trust bundle has fingerprint %s", fp)
	}
	target := certs.Fingerprint(roots[idx])
	for _, c := range s.signer().Roots() {
		if c.Equal(roots[idx]) {
			return nil, badRequest("root %s anchors the CA that signs now; rotate first (trellis ca rotate)", target[:16])
		}
	}
	if len(roots) == 1 {
		return nil, badRequest("root %s is the only one in the bundle", target[:16])
	}
	ops := []store.Op{}
	ikv, err := s.store.Get(ctx, keyIssuer)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if err == nil {
		var rec issuerRecord
		if err := json.Unmarshal(ikv.Value, &rec); err != nil {
			return nil, fmt.Errorf("decode issuer record: %w", err)
		}
		if next := certs.Fingerprints([]byte(rec.RootPEM)); len(next) > 0 && next[0] == target && rec.Phase != v1.RotationRetired {
			return nil, badRequest("root %s is the one the %s rotation signs with; finish the rotation (trellis ca rotate)", target[:16], rec.Phase)
		}
		if old := certs.Fingerprints([]byte(rec.OldRootPEM)); len(old) > 0 && old[0] == target && rec.Phase != v1.RotationRetired {
			if rec.Phase != v1.RotationActive {
				return nil, badRequest("root %s still signs: switch the rotation first", target[:16])
			}
			if now := time.Now(); now.Before(rec.OldSVIDsUntil) && !req.Force {
				return nil, &apiError{status: http.StatusConflict, msg: fmt.Sprintf("certificates signed under root %s may be alive until %s (%s from now); remove it then, or with --force", target[:16], rec.OldSVIDsUntil.Format(time.RFC3339), rec.OldSVIDsUntil.Sub(now).Round(time.Second))}
			}
			rec.Phase, rec.CrossPEM = v1.RotationRetired, ""
			// The new root signs alone from now on, on every server.
			skv, err := s.store.Get(ctx, keySigner)
			if err != nil {
				return nil, fmt.Errorf("read the shared CA: %w", err)
			}
			next, err := s.rotatedSigner(rec, false)
			if err != nil {
				return nil, err
			}
			ops = append(ops, s.issuerOp(rec, ikv.Rev), s.putSignerOp(next, skv.Rev))
		}
	}
	var rest strings.Builder
	for i, c := range roots {
		if i != idx {
			rest.Write(pemCert(c.Raw))
		}
	}
	bundle.RootsPEM = rest.String()
	b, _ := json.Marshal(bundle)
	ops = append(ops, store.Op{Key: keyBundle, Value: b, IfRev: bkv.Rev})
	if err := s.store.Commit(ctx, ops); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil, &apiError{status: http.StatusConflict, msg: "the bundle changed meanwhile; try again"}
		}
		return nil, err
	}
	s.log.Info("root removed from the trust bundle", "root", target)
	m := s.state.mesh()
	return v1.Roots{TrustDomain: m.TrustDomain, RootsPEM: bundle.RootsPEM}, nil
}
