package control

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/store"
)

// A store of a version before the shared CA, mid-rotation (switched: the
// rotation's key signs, kept in clear in /ca/issuer), and its server's
// data dir with the old CA: the first start signs with the rotation's key
// as before, and afterwards no value in the store is a key in clear.
func TestSharedCAMigratesClearRotationKey(t *testing.T) {
	endpoint := startExternalEtcd(t)
	now := time.Now()
	certPEM, keyPEM, err := ca.Generate("trellis.local", now)
	if err != nil {
		t.Fatal(err)
	}
	old, err := ca.Load("trellis.local", certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	next, err := old.Rotate(now)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ca.pem"), certPEM, 0o644)
	os.WriteFile(filepath.Join(dir, "ca-key.pem"), keyPEM, 0o600)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.NewEtcd(ctx, store.EtcdConfig{Endpoints: []string{endpoint}, Prefix: "/trellis"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rec, _ := json.Marshal(issuerRecord{Phase: v1.RotationActive, RootPEM: string(next.RootPEM), CrossPEM: string(next.CrossPEM),
		KeyPEM: string(next.KeyPEM), OldRootPEM: string(certPEM), StartedAt: now, SwitchedAt: now, OldSVIDsUntil: now.Add(time.Hour)})
	if err := st.Put(ctx, keyIssuer, rec, 0); err != nil {
		t.Fatal(err)
	}

	srv, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", EtcdEndpoints: []string{endpoint}, Out: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	r := startRole(srv.Run)
	t.Cleanup(func() { r.stop(t, "server") })
	select {
	case <-srv.Ready():
	case err := <-r.done:
		t.Fatalf("server: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("server not ready")
	}
	newRoot, _ := ca.ParseCertificates(next.RootPEM)
	if got := srv.signer().Roots(); len(got) != 1 || !got[0].Equal(newRoot[0]) {
		t.Error("after the migration the server does not sign under the rotation's new root")
	}
	kvs, _, err := st.List(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		if bytes.Contains(kv.Value, []byte("PRIVATE KEY")) {
			t.Errorf("store key %s holds a private key in clear", kv.Key)
		}
	}
	ikv, err := st.Get(ctx, keyIssuer)
	if err != nil {
		t.Fatal(err)
	}
	var got issuerRecord
	json.Unmarshal(ikv.Value, &got)
	if k, err := srv.sealer.Open(keyIssuer, got.KeySealed); err != nil || !bytes.Equal(k, next.KeyPEM) {
		t.Errorf("the rotation's key, sealed: %v; want it to open to the key", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ca-key.pem")); err == nil {
		t.Error("ca-key.pem is still in the data dir")
	}
}

// lateStore applies a commit but answers it as timed out: what a client
// sees when etcd commits and the answer is lost (a timeout, a cut link).
type lateStore struct{ store.Store }

func (l lateStore) Commit(ctx context.Context, ops []store.Op) error {
	if err := l.Store.Commit(ctx, ops); err != nil {
		return err
	}
	return context.DeadlineExceeded
}

// A first server that makes the store secret and puts the CA into the
// store, whose commit's outcome it does not learn, keeps the secret: the
// commit may have applied, and then the secret is the only one that opens
// the mesh's CA. The next start joins with it.
func TestSharedCAKeepsMadeSecretWhenCommitUnknown(t *testing.T) {
	endpoint := startExternalEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.NewEtcd(ctx, store.EtcdConfig{Endpoints: []string{endpoint}, Prefix: "/trellis"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dir := t.TempDir()
	s := &Server{cfg: Config{DataDir: dir, TrustDomain: "trellis.local"}, store: lateStore{st},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if _, err := s.createSharedCA(ctx, nil, ""); err == nil {
		t.Fatal("createSharedCA answered a commit of unknown outcome as done")
	}
	kv, err := st.Get(ctx, keySigner)
	if err != nil {
		t.Fatalf("the commit did not apply (%v): the test's premise", err)
	}
	secret, from, err := s.storeSecret()
	if err != nil || secret == nil {
		t.Fatalf("store secret after an unknown commit: %q, %v; want the data dir's, which seals the stored CA", from, err)
	}
	if _, err := s.joinSharedCA(ctx, kv, secret, from); err != nil {
		t.Errorf("the next start cannot open the stored CA: %v", err)
	}
}
