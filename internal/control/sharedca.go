package control

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/store"
)

// One CA for every server on a store. The CA that signs (its certificate,
// chain and key) is kept in the store under keySigner, the key sealed with
// the store secret (ca.Sealer): every server on the store is given the
// same secret and signs with the same CA, and a reader of the store
// without the secret learns nothing of the key.
//
//   - The first server on a store that holds no CA stores one: the CA of
//     --ca-cert/--ca-key, the CA an older version kept in its data dir
//     (migrated: its ca-key.pem is then removed), or a new one. A Create
//     guards the write, so of two servers starting at once one CA wins
//     and the other server loads it.
//   - A server without a secret (flag, environment or the data dir's
//     store-secret file) on a store without a CA makes one in its data dir
//     (0600), which the other servers must then be given.
//   - The next servers load the store's CA; a missing or wrong secret is
//     refused with what to give.
//   - --ca-cert/--ca-key on a store that holds a CA: the same CA is
//     fine; a newer one whose root is in the trust bundle replaces it
//     (a renewed intermediate, or the last step of rotating an imported
//     root); anything else is refused. Servers without the flags follow
//     the store.
//   - Every server follows keySigner without a restart: a root rotation's
//     switch and retirement, and an import, rewrite it.

// StoreSecretEnv names the environment variable the CLI reads the store
// secret from.
const StoreSecretEnv = "TRELLIS_STORE_SECRET"

// StoreSecretFileName is the store secret's file in the data dir, used
// when no secret is given and made when the store holds no CA yet.
const StoreSecretFileName = "store-secret"

// signerRecord is what keySigner holds: the CA every server signs with.
type signerRecord struct {
	TrustDomain string `json:"trustDomain"`
	// CertPEM is the signing certificate and the chain above it.
	CertPEM string `json:"certPEM"`
	// RootPEM is the trust anchor when CertPEM does not end in it: a
	// rotation's cross-signed certificate between its switch and its
	// retirement.
	RootPEM string `json:"rootPEM,omitempty"`
	// KeySealed is the CA's private key (PEM), sealed with the store
	// secret for keySigner: never in clear.
	KeySealed string `json:"keySealed"`
	// Imported is set for a CA from --ca-cert/--ca-key, which Trellis
	// does not rotate itself.
	Imported bool `json:"imported,omitempty"`
	// Source says how the CA got here: generated, imported, migrated or
	// rotated.
	Source    string    `json:"source"`
	UpdatedAt time.Time `json:"updatedAt"`

	rev int64
}

// load builds the CA the record holds with its opened key.
func (r *signerRecord) load(trustDomain string, keyPEM []byte) (*ca.CA, error) {
	if r.TrustDomain != trustDomain {
		return nil, fmt.Errorf("the store's CA is for trust domain %q, this server's is %q (--trust-domain)", r.TrustDomain, trustDomain)
	}
	if r.RootPEM != "" {
		return ca.LoadNext(trustDomain, []byte(r.RootPEM), []byte(r.CertPEM), keyPEM)
	}
	return ca.Load(trustDomain, []byte(r.CertPEM), keyPEM)
}

func decodeSigner(kv store.KV) (*signerRecord, error) {
	var rec signerRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, fmt.Errorf("decode the shared CA record in the store: %w", err)
	}
	rec.rev = kv.Rev
	return &rec, nil
}

func (s *Server) putSignerOp(rec signerRecord, rev int64) store.Op {
	rec.TrustDomain = s.cfg.TrustDomain
	b, _ := json.Marshal(rec)
	return store.Op{Key: keySigner, Value: b, IfRev: rev}
}

// errLostRace says another server stored the shared CA first.
var errLostRace = errors.New("another server stored the shared CA first")

// sharedCA returns the CA this server signs with: the store's, or, on a
// store that holds none, the one it puts there. s.sealer is set with it.
func (s *Server) sharedCA(ctx context.Context) (*ca.CA, error) {
	for {
		secret, from, err := s.storeSecret()
		if err != nil {
			return nil, err
		}
		kv, err := s.store.Get(ctx, keySigner)
		switch {
		case errors.Is(err, store.ErrNotFound):
			c, err := s.createSharedCA(ctx, secret, from)
			if errors.Is(err, errLostRace) {
				continue
			}
			return c, err
		case err != nil:
			return nil, fmt.Errorf("read the shared CA from the store: %w", err)
		}
		return s.joinSharedCA(ctx, kv, secret, from)
	}
}

// storeSecret returns the store secret and where it is from, for
// messages; nil when none was given and the data dir holds none.
func (s *Server) storeSecret() ([]byte, string, error) {
	switch {
	case s.cfg.StoreSecret != "":
		return []byte(strings.TrimSpace(s.cfg.StoreSecret)), "$" + StoreSecretEnv, nil
	case s.cfg.StoreSecretFile != "":
		b, err := readSecretFile(s.cfg.StoreSecretFile)
		return b, "--store-secret-file " + s.cfg.StoreSecretFile, err
	}
	name := filepath.Join(s.cfg.DataDir, StoreSecretFileName)
	b, err := readSecretFile(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, "", nil
	}
	return b, name, err
}

// readSecretFile reads a store secret, which others may not read (as the
// CA key); its surrounding white space is not part of it.
func readSecretFile(name string) ([]byte, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return nil, fmt.Errorf("store secret file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("store secret file %s is readable by others (mode %v); chmod 600 it", name, fi.Mode().Perm())
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("store secret file: %w", err)
	}
	return []byte(strings.TrimSpace(string(b))), nil
}

// createSharedCA puts this server's first CA into a store that holds
// none.
func (s *Server) createSharedCA(ctx context.Context, secret []byte, from string) (*ca.CA, error) {
	first, err := s.firstCA(ctx)
	if err != nil {
		return nil, err
	}
	made := ""
	if secret == nil {
		secret = ca.NewSecret()
		made = filepath.Join(s.cfg.DataDir, StoreSecretFileName)
		if err := writeNewFile(made, append(secret, '\n'), 0o600); err != nil {
			return nil, fmt.Errorf("save the store secret: %w", err)
		}
		from = made
	}
	sealer, err := ca.NewSealer(secret)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", from, err)
	}
	first.rec.KeySealed = sealer.Seal(keySigner, first.keyPEM)
	first.rec.UpdatedAt = time.Now().UTC()
	ops := []store.Op{s.putSignerOp(first.rec, -1)}
	if iss := first.issuer; iss != nil {
		// An older version kept a rotation's key in clear: sealed now,
		// in the same commit.
		iss.KeySealed, iss.KeyPEM = sealer.Seal(keyIssuer, []byte(iss.KeyPEM)), ""
		b, _ := json.Marshal(iss)
		ops = append(ops, store.Op{Key: keyIssuer, Value: b, IfRev: iss.rev})
	}
	if err := s.store.Commit(ctx, ops); err != nil {
		notApplied := errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotApplied)
		if made != "" && notApplied {
			// This secret seals nothing: the next try must not take it
			// for the store's. After any other error the commit may have
			// applied, and then this secret is the only one that opens
			// the mesh's CA: it stays, and seals the next try's CA if not.
			os.Remove(made)
		}
		if errors.Is(err, store.ErrConflict) {
			s.log.Info("another server stored the shared CA first; loading it")
			return nil, errLostRace
		}
		return nil, fmt.Errorf("store the shared CA: %w", err)
	}
	s.sealer = sealer
	root := certs.Fingerprints(first.ca.RootsPEM())[0]
	switch first.rec.Source {
	case "migrated":
		if err := os.Remove(first.keyFile); err != nil {
			s.log.Warn("the CA key is in the store now, but its old file could not be removed; remove it", "file", first.keyFile, "err", err)
		}
		s.log.Info("migrated the data dir's CA into the store, its key sealed with the store secret; removed the key file",
			"root", root, "secret", from, "removed", first.keyFile)
	case "imported":
		s.logImported(first.ca, time.Now())
	default:
		s.log.Info("created the mesh's CA in the store, its key sealed with the store secret", "trustDomain", s.cfg.TrustDomain, "root", root, "secret", from)
	}
	if made != "" && len(s.cfg.EtcdEndpoints) > 0 {
		s.log.Warn("made a store secret: give every other server on this store the same one (--store-secret-file FILE, 0600, or $"+StoreSecretEnv+")", "file", made)
	}
	return first.ca, nil
}

// firstCA is what a server puts into a store that holds no CA.
type firstCA struct {
	ca     *ca.CA
	keyPEM []byte
	rec    signerRecord
	// issuer is an older version's rotation record whose key is in
	// clear, to seal.
	issuer *issuerRecord
	// keyFile is the data dir's key file to remove once migrated.
	keyFile string
}

// firstCA picks the CA for a store that holds none: --ca-cert/--ca-key,
// else what an older version of this server signed with (its data dir's
// CA, or the key of a rotation it had switched to), else a new one.
func (s *Server) firstCA(ctx context.Context) (*firstCA, error) {
	var f firstCA
	kv, err := s.store.Get(ctx, keyIssuer)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("read issuer record: %w", err)
	default:
		var rec issuerRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("decode issuer record: %w", err)
		}
		rec.rev = kv.Rev
		if rec.KeyPEM != "" {
			f.issuer = &rec
		}
	}
	if s.cfg.CACertFile != "" {
		p, err := s.loadImported()
		if err != nil {
			return nil, err
		}
		f.ca, f.keyPEM = p.ca, p.keyPEM
		f.rec = signerRecord{CertPEM: string(p.certPEM), Imported: true, Source: "imported"}
		return &f, nil
	}
	p, err := s.loadDataDirCA()
	if err != nil {
		return nil, err
	}
	if p == nil {
		certPEM, keyPEM, err := ca.Generate(s.cfg.TrustDomain, time.Now())
		if err != nil {
			return nil, err
		}
		c, err := ca.Load(s.cfg.TrustDomain, certPEM, keyPEM)
		if err != nil {
			return nil, err
		}
		f.ca, f.keyPEM = c, keyPEM
		f.rec = signerRecord{CertPEM: string(certPEM), Source: "generated"}
		return &f, nil
	}
	_, f.keyFile = s.dataDirCAFiles()
	f.ca, f.keyPEM = p.ca, p.keyPEM
	f.rec = signerRecord{CertPEM: string(p.certPEM), Source: "migrated"}
	if iss := f.issuer; iss != nil && iss.Phase != v1.RotationPrepared {
		// The older version signed with the rotation's key.
		c, err := ca.LoadNext(s.cfg.TrustDomain, []byte(iss.RootPEM), []byte(iss.CrossPEM), []byte(iss.KeyPEM))
		if err != nil {
			return nil, fmt.Errorf("load the rotated CA from the issuer record: %w", err)
		}
		f.ca, f.keyPEM = c, []byte(iss.KeyPEM)
		f.rec.CertPEM, f.rec.RootPEM = iss.CrossPEM, iss.RootPEM
		if iss.CrossPEM == "" {
			f.rec.CertPEM, f.rec.RootPEM = iss.RootPEM, ""
		}
	}
	return &f, nil
}

// joinSharedCA loads the CA the store holds.
func (s *Server) joinSharedCA(ctx context.Context, kv store.KV, secret []byte, from string) (*ca.CA, error) {
	rec, err := decodeSigner(kv)
	if err != nil {
		return nil, err
	}
	if secret == nil {
		return nil, fmt.Errorf("the store holds the mesh's CA, sealed with a store secret this server was not given: "+
			"start it with --store-secret-file FILE (mode 0600) or $%s holding the secret of the server that created the CA "+
			"(the %s file in its data dir)", StoreSecretEnv, StoreSecretFileName)
	}
	sealer, err := ca.NewSealer(secret)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", from, err)
	}
	keyPEM, err := sealer.Open(keySigner, rec.KeySealed)
	if err != nil {
		return nil, fmt.Errorf("the store secret from %s does not decrypt the mesh's CA in the store (%w): "+
			"give this server the secret the other servers on this store have (--store-secret-file FILE or $%s)", from, err, StoreSecretEnv)
	}
	c, err := rec.load(s.cfg.TrustDomain, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load the shared CA from the store: %w", err)
	}
	s.sealer = sealer
	if s.cfg.CACertFile != "" {
		if c, err = s.importOver(ctx, c, rec); err != nil {
			return nil, err
		}
	} else if rec.Imported {
		s.logImported(c, time.Now())
	} else {
		s.log.Info("signing with the CA the servers on this store share", "root", certs.Fingerprints(c.RootsPEM())[0], "source", rec.Source)
	}
	s.retireDataDirKey(c)
	return c, nil
}

// importOver decides what --ca-cert/--ca-key do on a store that holds a
// CA (cur): the same CA is fine; a newer one whose root every proxy
// already trusts replaces it for every server; anything else is refused,
// so that no server signs with another CA than the rest.
func (s *Server) importOver(ctx context.Context, cur *ca.CA, rec *signerRecord) (*ca.CA, error) {
	p, err := s.loadImported()
	if err != nil {
		return nil, err
	}
	if p.ca.Certificate().Equal(cur.Certificate()) {
		s.logImported(p.ca, time.Now())
		return cur, nil
	}
	refuse := func(why string) error {
		return fmt.Errorf("--ca-cert %s (%s) is not the CA the servers on this store share (%s, root %s): %s",
			s.cfg.CACertFile, p.ca.Certificate().Subject, cur.Certificate().Subject, certs.Fingerprints(cur.RootsPEM())[0][:16], why)
	}
	const useShared = "start without --ca-cert/--ca-key to sign with the shared CA"
	if iss, err := s.store.Get(ctx, keyIssuer); err == nil {
		var r issuerRecord
		if json.Unmarshal(iss.Value, &r) == nil && (r.Phase == v1.RotationPrepared || r.Phase == v1.RotationActive) {
			return nil, refuse("a root rotation is " + r.Phase + "; finish it first (trellis ca rotate), or " + useShared)
		}
	}
	trusted, err := s.inBundle(ctx, p.ca.Roots()[0])
	if err != nil {
		return nil, err
	}
	if !trusted {
		return nil, refuse(fmt.Sprintf("its root %s is not in the trust bundle. %s; to replace it, add the new root first "+
			"(trellis ca add-root FILE), wait until every proxy trusts it (trellis get proxies), then restart one server with the new files",
			certs.Fingerprints(p.ca.RootsPEM())[0][:16], useShared))
	}
	// Certificate times are whole seconds: one made in the same second
	// counts as newer, an older one is a server restarted with stale files.
	if p.ca.Certificate().NotBefore.Before(cur.Certificate().NotBefore) {
		return nil, refuse("it is older than the shared CA; " + useShared)
	}
	next := signerRecord{CertPEM: string(p.certPEM), KeySealed: s.sealer.Seal(keySigner, p.keyPEM), Imported: true,
		Source: "imported", UpdatedAt: time.Now().UTC()}
	if err := s.store.Commit(ctx, []store.Op{s.putSignerOp(next, rec.rev)}); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil, errors.New("the shared CA changed in the store while this server replaced it with --ca-cert; start it again")
		}
		return nil, fmt.Errorf("store the imported CA: %w", err)
	}
	s.log.Info("replaced the shared CA with the imported one: every server on this store signs with it now",
		"was", cur.Certificate().Subject.String(), "wasRoot", certs.Fingerprints(cur.RootsPEM())[0])
	s.logImported(p.ca, time.Now())
	return p.ca, nil
}

// inBundle says whether root is in the store's trust bundle.
func (s *Server) inBundle(ctx context.Context, root *x509.Certificate) (bool, error) {
	kv, err := s.store.Get(ctx, keyBundle)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read trust bundle: %w", err)
	}
	var b bundleRecord
	if err := json.Unmarshal(kv.Value, &b); err != nil {
		return false, fmt.Errorf("decode trust bundle: %w", err)
	}
	roots, _ := ca.ParseCertificates([]byte(b.RootsPEM))
	for _, r := range roots {
		if r.Equal(root) {
			return true, nil
		}
	}
	return false, nil
}

// retireDataDirKey removes the CA key an older version kept in the data
// dir, once the store holds the CA: a migration cut off before it removed
// the file, or a second server that had made a CA of its own.
func (s *Server) retireDataDirKey(c *ca.CA) {
	certFile, keyFile := s.dataDirCAFiles()
	if _, err := os.Stat(keyFile); err != nil {
		return
	}
	certPEM, _ := os.ReadFile(certFile)
	old, _ := ca.ParseCertificates(certPEM)
	if err := os.Remove(keyFile); err != nil {
		s.log.Warn("the servers share the store's CA, but this data dir's old CA key could not be removed; remove it", "file", keyFile, "err", err)
		return
	}
	own := len(old) > 0 && !old[0].Equal(c.Certificate())
	for _, r := range c.Roots() {
		if len(old) > 0 && old[0].Equal(r) {
			own = false
		}
	}
	if !own {
		s.log.Info("removed the data dir's CA key: the store holds it, sealed", "removed", keyFile)
		return
	}
	s.log.Warn("this data dir's own CA is no longer used: every server on this store signs with the store's; "+
		"its root stays in the trust bundle while certificates it signed may be alive, then remove it with trellis ca remove-root",
		"root", certs.Fingerprint(old[0]), "removableAfter", time.Now().Add(s.cfg.SVIDTTL+switchMargin).UTC().Format(time.RFC3339), "removed", keyFile)
}

// followSigner adopts every change of the shared CA (a rotation's switch
// or retirement, an import on another server) without a restart.
func (s *Server) followSigner(ctx context.Context) {
	var seen int64
	for {
		changed := s.state.Changed()
		if rec := s.state.signerRecord(); rec != nil && rec.rev != seen {
			seen = rec.rev
			s.adoptSigner(rec)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

func (s *Server) adoptSigner(rec *signerRecord) {
	keyPEM, err := s.sealer.Open(keySigner, rec.KeySealed)
	if err != nil {
		s.log.Error("the shared CA in the store changed, and this server's store secret does not open it; still signing with the previous one", "err", err)
		return
	}
	c, err := rec.load(s.cfg.TrustDomain, keyPEM)
	if err != nil {
		s.log.Error("load the shared CA from the store; still signing with the previous one", "err", err)
		return
	}
	if cur := s.signer(); cur != nil && cur.Certificate().Equal(c.Certificate()) && string(cur.RootsPEM()) == string(c.RootsPEM()) {
		return
	}
	s.issuer.Store(c)
	if err := s.writeRootsFile(c); err != nil {
		s.log.Error("save the shared CA's roots in the data dir", "err", err)
	}
	select {
	case s.reissue <- struct{}{}:
	default:
	}
	s.log.Info("signing with the shared CA from the store", "source", rec.Source, "root", certs.Fingerprints(c.RootsPEM())[0])
}

// writeRootsFile keeps the data dir's ca.pem the roots of the CA that
// signs, which the CLI of `trellis up` and scripts trust the API by.
func (s *Server) writeRootsFile(c *ca.CA) error {
	certFile, _ := s.dataDirCAFiles()
	return writeFileAtomic(certFile, c.RootsPEM(), 0o644)
}

// writeNewFile writes name whole, durably, and only if it does not exist.
func writeNewFile(name string, b []byte, mode os.FileMode) error {
	tmp := name + ".new"
	if err := writeFileAtomic(tmp, b, mode); err != nil {
		return err
	}
	defer os.Remove(tmp)
	return os.Link(tmp, name)
}
