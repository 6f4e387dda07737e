package control

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
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
