package sidecar

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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

// chainPEM encodes cert's chain as the state file holds it.
func chainPEM(cert *tls.Certificate) string {
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return string(chain)
}

// A state file whose key is not its certificate's (what a crash between
// saving one and the other used to leave) is refused with a message that
// names the file, and the proxy starts without it, to ask the control
// plane for a certificate.
func TestLoadStateRefusesMismatchedPair(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a, b := ca.SVID(t, "web", time.Hour), ca.SVID(t, "web", time.Hour)
	snap := &topology.Snapshot{Version: "v1", Service: "web", TrustDomain: "trellis.local", RootsPEM: string(ca.RootsPEM()), MTLS: "strict"}
	dir := t.TempDir()
	if err := saveState(dir, persisted{ChainPEM: chainPEM(a), KeyPEM: string(trellistest.KeyPEM(t, b)), Snapshot: snap}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, stateFile)
	c, _, err := loadState(dir, "web", time.Now())
	if c != nil || err == nil {
		t.Fatalf("loadState = %v, %v; want the mismatched pair refused", c, err)
	}
	if !errors.Is(err, errKeyMismatch) || !strings.Contains(err.Error(), path) {
		t.Errorf("error %q: want it to say the key does not match and name %s", err, path)
	}

	var logs bytes.Buffer
	p, err := New(Config{Service: "web", AppAddr: "127.0.0.1:1", Server: "127.0.0.1:1", Token: "t", StateDir: dir,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	p.restoreState()
	if p.src.Certificate() != nil {
		t.Error("a mismatched persisted pair was installed")
	}
	if !strings.Contains(logs.String(), "does not match") || !strings.Contains(logs.String(), path) {
		t.Errorf("log %q: want a line saying the pair does not match, naming %s", logs.String(), path)
	}
}

// Renewals (the certificate loop) and snapshots (the stream) both ask for
// the state to be saved, from two goroutines. Every file on disk, read at
// any moment, must be a matching pair, and the last one saved must hold
// the last certificate installed: one writer, one file, one value.
func TestPersistNeverSplitsKeyAndCertificate(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	dir := t.TempDir()
	p, err := New(Config{Service: "web", AppAddr: "127.0.0.1:1", Server: "127.0.0.1:1", Token: "t", StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	snap := func(v string) *topology.Snapshot {
		return &topology.Snapshot{Version: v, Service: "web", TrustDomain: "trellis.local", RootsPEM: string(ca.RootsPEM()), MTLS: "strict"}
	}
	if err := p.apply(snap("v0")); err != nil {
		t.Fatal(err)
	}
	const renewals = 60
	svids := make([]*tls.Certificate, renewals)
	for i := range svids {
		svids[i] = ca.SVID(t, "web", time.Hour)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); p.runPersist(ctx) }()
	var reading atomic.Bool
	reading.Store(true)
	readErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		// What a restart at this moment would load.
		defer wg.Done()
		for reading.Load() {
			if _, _, err := loadState(dir, "web", time.Now()); err != nil {
				select {
				case readErr <- err:
				default:
				}
				return
			}
		}
	}()
	var writers sync.WaitGroup
	writers.Add(2)
	go func() {
		defer writers.Done()
		for _, c := range svids {
			p.setCredential(c, trellistest.KeyPEM(t, c))
			p.persist()
		}
	}()
	go func() {
		defer writers.Done()
		for i := range renewals {
			if err := p.apply(snap(fmt.Sprintf("v%d", i+1))); err != nil {
				t.Error(err)
				return
			}
			p.persist()
		}
	}()
	writers.Wait()
	cancel()
	reading.Store(false)
	wg.Wait()
	select {
	case err := <-readErr:
		t.Fatalf("a restart during renewals would have loaded: %v", err)
	default:
	}
	c, st, err := loadState(dir, "web", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if last := svids[renewals-1]; c.Leaf.SerialNumber.Cmp(last.Leaf.SerialNumber) != 0 {
		t.Errorf("saved certificate serial %v, want the last installed %v", c.Leaf.SerialNumber, last.Leaf.SerialNumber)
	}
	if want := fmt.Sprintf("v%d", renewals); st.Snapshot.Version != want {
		t.Errorf("saved snapshot %s, want the last applied %s", st.Snapshot.Version, want)
	}
}

// FuzzLoadState: whatever the state file holds, loadState does not panic,
// and what it accepts is a certificate whose key is its own.
func FuzzLoadState(f *testing.F) {
	ca := trellistest.NewCA(f, "trellis.local")
	a, b := ca.SVID(f, "web", time.Hour), ca.SVID(f, "web", time.Hour)
	snap := &topology.Snapshot{Version: "v1", Service: "web", TrustDomain: "trellis.local", RootsPEM: string(ca.RootsPEM()), MTLS: "strict"}
	for _, st := range []persisted{
		{ChainPEM: chainPEM(a), KeyPEM: string(trellistest.KeyPEM(f, a)), Snapshot: snap},
		{ChainPEM: chainPEM(a), KeyPEM: string(trellistest.KeyPEM(f, b)), Snapshot: snap},
		{ChainPEM: chainPEM(a), KeyPEM: "", Snapshot: snap},
		{ChainPEM: "", KeyPEM: string(trellistest.KeyPEM(f, a)), Snapshot: snap},
	} {
		js, err := json.Marshal(st)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(js)
	}
	f.Add([]byte(`{"chain":"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n","key":"x"}`))
	f.Add([]byte("{garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, stateFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		cert, _, err := loadState(dir, "web", time.Now())
		if err != nil || cert == nil {
			return
		}
		pub, ok := cert.PrivateKey.(interface{ Public() crypto.PublicKey })
		if !ok || !pub.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.Leaf.PublicKey) {
			t.Fatal("loadState returned a certificate whose key is not its own")
		}
	})
}

// The public port is read alone: a state file whose certificate expired
// (or that another service wrote) still names the port to take again.
func TestPersistedPort(t *testing.T) {
	for _, tc := range []struct {
		name, content string
		want          int
	}{
		{"saved", `{"publicPort":43123,"chain":"expired"}`, 43123},
		{"none saved", `{"chain":""}`, 0},
		{"out of range", `{"publicPort":70000}`, 0},
		{"negative", `{"publicPort":-1}`, 0},
		{"not JSON", `publicPort=1`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, stateFile), []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := persistedPort(dir); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}
	if got := persistedPort(t.TempDir()); got != 0 {
		t.Errorf("no file: got %d, want 0", got)
	}
}
