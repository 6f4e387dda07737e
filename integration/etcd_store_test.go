//go:build linux

package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// TestStoreExternalEtcdTLSAndLogin runs the server on an external etcd that
// demands a client certificate and a login, as a production cluster
// should: with the CA, the certificate and the user's password (from a
// file) it serves; without the certificate, or with a wrong password, it
// exits with an error that says what is wrong, and never shows the
// password.
func TestStoreExternalEtcdTLSAndLogin(t *testing.T) {
	pki := trellistest.WriteTLSFiles(t, t.TempDir(), "etcd-client")
	endpoint := storeStartTLSEtcd(t, pki)
	password := "correct horse battery"
	pwFile := filepath.Join(t.TempDir(), "etcd-password")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsArgs := []string{"--etcd-endpoints", endpoint, "--etcd-ca-file", pki.CA, "--etcd-cert-file", pki.ClientCert, "--etcd-key-file", pki.ClientKey}

	t.Run("with certificate and login", func(t *testing.T) {
		s := startServer(t, append(tlsArgs, "--etcd-username", "trellis", "--etcd-password-file", pwFile)...)
		if _, err := s.api.Services(t.Context()); err != nil {
			t.Fatalf("server on the TLS etcd: %v", err)
		}
		if strings.Contains(s.logText(), password) {
			t.Error("the server's log shows the etcd password")
		}
	})

	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"without the client certificate",
			[]string{"--etcd-endpoints", endpoint, "--etcd-ca-file", pki.CA, "--etcd-username", "trellis", "--etcd-password-file", pwFile},
			nil, "wants a client certificate and none is configured"},
		{"with a wrong password",
			append(tlsArgs, "--etcd-username", "trellis"),
			[]string{"TRELLIS_ETCD_PASSWORD=not the password"}, `user "trellis": wrong username or password`},
		{"without a login, as the certificate's name",
			tlsArgs, nil, `user "etcd-client", the client certificate's common name, may not use keys under /trellis`},
		{"over http://",
			[]string{"--etcd-endpoints", strings.Replace(endpoint, "https://", "http://", 1), "--etcd-username", "trellis", "--etcd-password-file", pwFile},
			nil, "the server speaks TLS: use an https:// URL"},
		{"TLS files with an http:// URL",
			append([]string{"--etcd-endpoints", strings.Replace(endpoint, "https://", "http://", 1)}, tlsArgs[2:]...),
			nil, "TLS is configured, but the URLs are http://"},
		{"password without a user",
			[]string{"--etcd-endpoints", endpoint, "--etcd-password-file", pwFile},
			nil, "etcd password: given without an etcd username"},
		{"password file and environment",
			[]string{"--etcd-endpoints", endpoint, "--etcd-username", "trellis", "--etcd-password-file", pwFile},
			[]string{"TRELLIS_ETCD_PASSWORD=not the password"}, "give one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"server", "--data-dir", t.TempDir(), "--listen", fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))}, tc.args...)
			out, code := runCLI(t, tc.env, args...)
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, output:\n%s\nwant a failure saying %q", code, out, tc.want)
			}
			if strings.Contains(out, password) || strings.Contains(out, "not the password") {
				t.Errorf("the error shows the password:\n%s", out)
			}
		})
	}
}

// storeStartTLSEtcd runs an etcd process that serves clients only over
// mutual TLS with pki's CA, with authentication enabled and a user
// "trellis" (password "correct horse battery") allowed the /trellis keys.
func storeStartTLSEtcd(t *testing.T, pki trellistest.TLSFiles) string {
	t.Helper()
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd binary not found; install Debian's etcd-server (.ci/run does)")
	}
	client, peer := fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t)), fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))
	cmd := exec.Command(etcd, "--name", "ext", "--data-dir", filepath.Join(t.TempDir(), "etcd"),
		"--listen-client-urls", "https://"+client, "--advertise-client-urls", "https://"+client,
		"--cert-file", pki.ServerCert, "--key-file", pki.ServerKey, "--trusted-ca-file", pki.CA, "--client-cert-auth",
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "ext=http://"+peer, "--log-level", "error")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	trellistest.Eventually(t, 20*time.Second, "etcd listening", func() error {
		c, err := net.Dial("tcp", client)
		if err == nil {
			c.Close()
		}
		return err
	})
	tlsCfg, err := store.ClientTLS(pki.CA, pki.ClientCert, pki.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + client}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx := t.Context()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "root secret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "mesh"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "mesh", "/trellis/", clientv3.GetPrefixRangeEnd("/trellis/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "trellis", "correct horse battery"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "trellis", "mesh"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("set up etcd auth: %v", err)
		}
	}
	return "https://" + client
}
