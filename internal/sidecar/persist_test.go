package sidecar

import (
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/topology"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

func TestPersistRoundTrip(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	cert := ca.SVID(t, "web", time.Hour)
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyPEM := trellistest.KeyPEM(t, cert)
	snap := &topology.Snapshot{Version: "v1", Service: "web", TrustDomain: "trellis.local", RootsPEM: string(ca.RootsPEM()), MTLS: "strict"}
	dir := t.TempDir()
	if err := saveState(dir, persisted{ChainPEM: string(chain), KeyPEM: string(keyPEM), Snapshot: snap}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600 (it holds the private key)", fi.Mode().Perm())
	}

	tests := []struct {
		name    string
		service string
		now     time.Time
		wantOK  bool
	}{
		{"same service, valid", "web", time.Now(), true},
		{"another service", "db", time.Now(), false},
		{"certificate expired", "web", time.Now().Add(2 * time.Hour), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, st, err := loadState(dir, tt.service, tt.now)
			if tt.wantOK {
				if err != nil || c == nil || st.Snapshot.Version != "v1" {
					t.Fatalf("loadState = %v, %v, %v; want the saved state", c, st, err)
				}
				return
			}
			if err == nil {
				t.Fatal("loadState succeeded, want an error")
			}
		})
	}
	if c, _, err := loadState(t.TempDir(), "web", time.Now()); c != nil || err != nil {
		t.Errorf("empty dir: %v, %v; want nothing and no error", c, err)
	}
	os.WriteFile(filepath.Join(dir, stateFile), []byte("{garbage"), 0o600)
	if _, _, err := loadState(dir, "web", time.Now()); err == nil {
		t.Error("corrupt state file accepted")
	}
}
