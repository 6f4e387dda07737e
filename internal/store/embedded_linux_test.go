package store_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/store/storetest"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// TestEmbeddedRefusesLocalIntruders plays a local process that finds the
// embedded etcd's sockets as ss would and tries to read and write the store
// through each: every listener of this process (etcd's client and peer
// ports, and any other) must refuse it, at the TLS handshake, while the
// server's own client keeps working.
func TestEmbeddedRefusesLocalIntruders(t *testing.T) {
	dir := t.TempDir()
	var (
		mu      sync.Mutex
		refused = map[string][]store.Refusal{}
	)
	e, err := store.StartEmbedded(context.Background(), store.EmbeddedConfig{Dir: dir, OnRefused: func(r store.Refusal) {
		mu.Lock()
		defer mu.Unlock()
		refused[r.Listener] = append(refused[r.Listener], r)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cfg := e.Config()
	cfg.Prefix = "/trellis"
	s, err := store.NewEtcd(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Put(ctx, "/secret", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}

	l, err := trellistest.ListenersOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// The client port and the peer port, at least: a single member listens
	// for peers too.
	if len(l.TCP) < 2 {
		t.Fatalf("found listeners %v, want etcd's client and peer ports", l.TCP)
	}
	for _, addr := range l.TCP {
		if host, _, _ := net.SplitHostPort(addr); host != "127.0.0.1" {
			t.Errorf("listener %s: want loopback only", addr)
		}
	}
	t.Run("listeners", func(t *testing.T) {
		for _, addr := range append(l.TCP, l.Unix...) {
			t.Run(addr, func(t *testing.T) {
				t.Parallel()
				if got := storetest.Intrude(ctx, addr, "/trellis/tokens/intruder", `{"admin":true}`); len(got) > 0 {
					t.Errorf("a process without credentials got through %s: %v", addr, got)
				}
				if got := storetest.IntrudeHTTP(ctx, addr); len(got) > 0 {
					t.Errorf("a process without credentials reached etcd's HTTP handlers at %s: %v", addr, got)
				}
			})
		}
	})

	// etcd must read its peer key from a file; holding it must not open the
	// client API (the client listener trusts another CA).
	t.Run("peer key", func(t *testing.T) {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "etcd-tls", "peer.pem"), filepath.Join(dir, "etcd-tls", "peer-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   e.Endpoints(),
			TLS:         &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}},
			DialTimeout: 2 * time.Second,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			return
		}
		defer c.Close()
		octx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		if _, err := c.Get(octx, "/trellis/secret"); err == nil {
			t.Error("the peer certificate read the store through the client port")
		}
	})

	// Both listeners reported what they refused, and why.
	trellistest.Eventually(t, 10*time.Second, "refusals reported by both listeners", func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range []string{"client", "peer"} {
			if len(refused[l]) == 0 {
				return fmt.Errorf("none reported by the %s listener (got %v)", l, refused)
			}
			if r := refused[l][0]; r.Remote == "" || r.Reason == "" {
				return fmt.Errorf("%s refusal %+v: want the remote address and a reason", l, r)
			}
		}
		return nil
	})

	if _, err := s.Get(ctx, "/tokens/intruder"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("intruder's key: err = %v, want ErrNotFound", err)
	}
	if kv, err := s.Get(ctx, "/secret"); err != nil || string(kv.Value) != "v" {
		t.Errorf("server's own read after the attempts: %q, %v; want \"v\"", kv.Value, err)
	}
}

// TestEmbeddedCredentials checks where the credentials live and that they
// do not outlive a run: files 0600 in a 0700 dir, fresh at every start, and
// one data dir serves one etcd at a time.
func TestEmbeddedCredentials(t *testing.T) {
	dir := t.TempDir()
	e, err := store.StartEmbedded(context.Background(), store.EmbeddedConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	old := e.Config()
	if _, err := store.StartEmbedded(context.Background(), store.EmbeddedConfig{Dir: dir}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second start on %s: err = %v, want one saying it is in use", dir, err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "etcd-tls")} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v (%v), want 0700", p, fi.Mode().Perm(), err)
		}
	}
	files, _ := os.ReadDir(filepath.Join(dir, "etcd-tls"))
	if len(files) == 0 {
		t.Fatal("no credential files")
	}
	for _, f := range files {
		if fi, _ := f.Info(); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %04o, want 0600", f.Name(), fi.Mode().Perm())
		}
		if strings.Contains(f.Name(), "client") && strings.Contains(f.Name(), "key") {
			t.Errorf("%s: the client key must stay in memory", f.Name())
		}
	}
	e.Close()

	e2, err := store.StartEmbedded(context.Background(), store.EmbeddedConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	stale := old
	stale.Endpoints = e2.Endpoints()
	stale.DialTimeout = 2 * time.Second
	if s, err := store.NewEtcd(context.Background(), stale); err == nil {
		s.Close()
		t.Error("the previous run's client credentials opened the restarted store")
	}
	cur, err := store.NewEtcd(context.Background(), e2.Config())
	if err != nil {
		t.Fatalf("restarted store: %v", err)
	}
	cur.Close()
}

func TestPrivateDir(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    os.FileMode // 0: missing
		wantWas os.FileMode
		wantErr bool
	}{
		{name: "missing"},
		{name: "0700", mode: 0o700},
		{name: "0755 is tightened", mode: 0o755, wantWas: 0o755},
		{name: "0750 is tightened", mode: 0o750, wantWas: 0o750},
		{name: "0770 group may write", mode: 0o770, wantErr: true},
		{name: "0777 anyone may write", mode: 0o777, wantErr: true},
		{name: "0703 others may write", mode: 0o703, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			if tc.mode != 0 {
				if err := os.Mkdir(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(dir, tc.mode); err != nil {
					t.Fatal(err)
				}
			}
			was, err := store.PrivateDir(dir)
			if tc.wantErr {
				if !errors.Is(err, store.ErrDirNotPrivate) || !strings.Contains(err.Error(), dir) {
					t.Fatalf("err = %v, want ErrDirNotPrivate naming %s", err, dir)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if was != tc.wantWas {
				t.Errorf("was = %04o, want %04o", was, tc.wantWas)
			}
			if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("mode after = %v (%v), want 0700", fi.Mode().Perm(), err)
			}
		})
	}
	t.Run("a file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "f")
		os.WriteFile(f, nil, 0o600)
		if _, err := store.PrivateDir(f); err == nil {
			t.Error("err = nil, want an error for a file")
		}
	})
}
