package store_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/store/storetest"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// TestExternalEtcdClientCert runs the suite against an etcd that demands a
// client certificate, and checks that a client without one, or one that
// does not trust etcd's CA, is told why it cannot connect.
func TestExternalEtcdClientCert(t *testing.T) {
	f := trellistest.WriteTLSFiles(t, t.TempDir(), "trellis")
	ep := startExternal(t, "https", "--cert-file", f.ServerCert, "--key-file", f.ServerKey,
		"--trusted-ca-file", f.CA, "--client-cert-auth")

	tlsCfg, err := store.ClientTLS(f.CA, f.ClientCert, f.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	storetest.Run(t, newOn(store.EtcdConfig{Endpoints: []string{ep}, TLS: tlsCfg}))

	other := trellistest.WriteTLSFiles(t, t.TempDir(), "trellis")
	for _, tc := range []struct {
		name     string
		cfg      func() store.EtcdConfig
		wantText string
	}{
		{"no client certificate", func() store.EtcdConfig {
			c, err := store.ClientTLS(f.CA, "", "")
			if err != nil {
				t.Fatal(err)
			}
			return store.EtcdConfig{Endpoints: []string{ep}, TLS: c}
		}, "wants a client certificate and none is configured"},
		{"certificate from another CA", func() store.EtcdConfig {
			c, err := store.ClientTLS(f.CA, other.ClientCert, other.ClientKey)
			if err != nil {
				t.Fatal(err)
			}
			return store.EtcdConfig{Endpoints: []string{ep}, TLS: c}
		}, "bad certificate"},
		{"etcd's CA not trusted", func() store.EtcdConfig {
			c, err := store.ClientTLS(other.CA, f.ClientCert, f.ClientKey)
			if err != nil {
				t.Fatal(err)
			}
			return store.EtcdConfig{Endpoints: []string{ep}, TLS: c}
		}, "unknown authority"},
		{"http:// URL", func() store.EtcdConfig {
			return store.EtcdConfig{Endpoints: []string{strings.Replace(ep, "https://", "http://", 1)}}
		}, "speaks TLS: use an https:// URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg()
			cfg.DialTimeout = 2 * time.Second
			s, err := store.NewEtcd(context.Background(), cfg)
			if err == nil {
				s.Close()
				t.Fatal("connected, want an error")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), tc.wantText) || !strings.Contains(err.Error(), cfg.Endpoints[0]) {
				t.Errorf("err = %v, want one naming %s and saying %q", err, cfg.Endpoints[0], tc.wantText)
			}
		})
	}
}

// TestExternalEtcdClientCertRenewed: a client certificate renewed in its
// files is used on the next connection, without a new configuration.
func TestExternalEtcdClientCertRenewed(t *testing.T) {
	f := trellistest.WriteTLSFiles(t, t.TempDir(), "trellis")
	ep := startExternal(t, "https", "--cert-file", f.ServerCert, "--key-file", f.ServerKey,
		"--trusted-ca-file", f.CA, "--client-cert-auth")
	other := trellistest.WriteTLSFiles(t, t.TempDir(), "trellis")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	copyFile := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(other.ClientCert, certFile)
	copyFile(other.ClientKey, keyFile)
	tlsCfg, err := store.ClientTLS(f.CA, certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := store.EtcdConfig{Endpoints: []string{ep}, TLS: tlsCfg, DialTimeout: 2 * time.Second}
	if s, err := store.NewEtcd(context.Background(), cfg); err == nil {
		s.Close()
		t.Fatal("a certificate from another CA connected")
	}
	copyFile(f.ClientCert, certFile)
	copyFile(f.ClientKey, keyFile)
	s, err := store.NewEtcd(context.Background(), cfg)
	if err != nil {
		t.Fatalf("after the files were renewed: %v", err)
	}
	s.Close()

	// A broken renewal keeps the last good pair.
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = store.NewEtcd(context.Background(), cfg)
	if err != nil {
		t.Fatalf("after a broken renewal: %v", err)
	}
	s.Close()
}

// TestExternalEtcdUserAuth runs the suite as an etcd user whose role allows
// only the suite's keys, and checks the errors for a missing login and a
// wrong password.
func TestExternalEtcdUserAuth(t *testing.T) {
	ep := startExternal(t, "http")
	ctx := context.Background()
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "root-secret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "mesh"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "mesh", "/test", clientv3.GetPrefixRangeEnd("/test"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "trellis", "s3cret pass"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "trellis", "mesh"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("set up etcd auth: %v", err)
		}
	}

	storetest.Run(t, newOn(store.EtcdConfig{Endpoints: []string{ep}, Username: "trellis", Password: "s3cret pass"}))

	for _, tc := range []struct {
		name     string
		cfg      store.EtcdConfig
		wantText string
	}{
		{"no login", store.EtcdConfig{Endpoints: []string{ep}, Prefix: "/test-x"}, "requires authentication"},
		{"wrong password", store.EtcdConfig{Endpoints: []string{ep}, Username: "trellis", Password: "guess", Prefix: "/test-x"}, "wrong username or password"},
		{"keys outside the role", store.EtcdConfig{Endpoints: []string{ep}, Username: "trellis", Password: "s3cret pass", Prefix: "/trellis"}, "may not use keys under /trellis"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.DialTimeout = 2 * time.Second
			s, err := store.NewEtcd(context.Background(), tc.cfg)
			if err == nil {
				s.Close()
				t.Fatal("connected, want an error")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("err = %v, want one saying %q", err, tc.wantText)
			}
			if tc.cfg.Password != "" && strings.Contains(err.Error(), tc.cfg.Password) {
				t.Errorf("err = %v: shows the password", err)
			}
		})
	}
}

func TestEtcdConfigErrors(t *testing.T) {
	tlsCfg, err := store.ClientTLS("", "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		cfg      store.EtcdConfig
		wantText string
	}{
		{"no endpoints", store.EtcdConfig{}, "no endpoints"},
		{"bad scheme", store.EtcdConfig{Endpoints: []string{"tcp://127.0.0.1:2379"}}, `"tcp://127.0.0.1:2379": want an http:// or https:// URL`},
		{"no port", store.EtcdConfig{Endpoints: []string{"http://etcd"}}, "want scheme://host:port"},
		{"mixed", store.EtcdConfig{Endpoints: []string{"http://a:1", "https://b:2"}}, "mix http:// and https://"},
		{"TLS over http", store.EtcdConfig{Endpoints: []string{"http://a:1"}, TLS: tlsCfg}, "URLs are http://"},
		{"password in the URL", store.EtcdConfig{Endpoints: []string{"http://root:hunter2@a:1"}}, `"http://root:xxxxx@a:1": no user:password@ in the URL`},
		{"password alone", store.EtcdConfig{Endpoints: []string{"http://a:1"}, Password: "x"}, "give both or neither"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := store.NewEtcd(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("err = %v, want one saying %q", err, tc.wantText)
			}
		})
	}
	if _, err := store.ClientTLS("", "/nonexistent/cert.pem", ""); err == nil || !strings.Contains(err.Error(), "both or neither") {
		t.Errorf("cert without key: err = %v", err)
	}
	if _, err := store.ClientTLS("/nonexistent/ca.pem", "", ""); err == nil || !strings.Contains(err.Error(), "/nonexistent/ca.pem") {
		t.Errorf("missing CA file: err = %v", err)
	}
}
