//go:build linux

package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// startServerKnownCA starts a server that imports a CA the test made, so
// that the test holds its key (the store holds it only sealed).
func startServerKnownCA(t *testing.T, extra ...string) *server {
	t.Helper()
	certPEM, keyPEM, err := ca.Generate("trellis.local", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, append([]string{"--ca-cert", certFile, "--ca-key", keyFile}, extra...)...)
	s.caKeyFile = keyFile
	return s
}

// startServerB starts a second server on the etcd at endpoint, which
// accepts a's admin token.
func startServerB(t *testing.T, endpoint string, a *server, extra ...string) *server {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))
	dir := t.TempDir()
	args := append([]string{"server", "--data-dir", dir, "--listen", addr, "--etcd-endpoints", endpoint, "--log-level", "debug"}, extra...)
	b := &server{proc: start(t, "server-b", nil, args...), addr: addr, dataDir: dir, caFile: filepath.Join(dir, "ca.pem"), admin: a.admin}
	caPEM, _ := os.ReadFile(a.caFile)
	b.api, _ = client.New(client.Config{Addr: addr, Token: a.admin, CAPEM: caPEM})
	trellistest.Eventually(t, 30*time.Second, "server b answers with the shared admin token", func() error {
		_, err := b.api.Services(t.Context())
		return err
	})
	return b
}

// copySecret copies a's store secret to a file of the test's, as an
// operator hands it to the next server.
func copySecret(t *testing.T, a *server) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "store-secret")
	if err := os.WriteFile(f, []byte(readFile(t, filepath.Join(a.dataDir, "store-secret"))), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The CA key in etcd is sealed: no value under the prefix is a PEM
// private key, and the shared CA's key opens with the store secret, for
// its own key only, and with no other secret. A second server without the
// secret, with a wrong one, with one others may read, or with a CA of its
// own, is refused with a message that says what to give.
func TestSharedCASealedAndRefusals(t *testing.T) {
	endpoint := startEtcd(t)
	a := startServer(t, "--etcd-endpoints", endpoint)
	secretFile := filepath.Join(a.dataDir, "store-secret")
	if fi, err := os.Stat(secretFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("store secret file: %v, %v; want one at mode 0600", fi, err)
	}
	secret := strings.TrimSpace(readFile(t, secretFile))
	if strings.Contains(a.logText(), secret) {
		t.Error("the server logged the store secret")
	}
	if _, err := os.Stat(filepath.Join(a.dataDir, "ca-key.pem")); err == nil {
		t.Error("the server wrote the CA key in clear in its data dir")
	}

	ec := etcdClient(t, endpoint)
	resp, err := ec.Get(t.Context(), "/trellis/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var signer []byte
	for _, kv := range resp.Kvs {
		if bytes.Contains(kv.Value, []byte("PRIVATE KEY")) {
			t.Errorf("etcd key %s holds a PEM private key", kv.Key)
		}
		if string(kv.Key) == "/trellis/ca/signer" {
			signer = kv.Value
		}
	}
	if signer == nil {
		t.Fatal("no /trellis/ca/signer in etcd")
	}
	var rec struct{ CertPEM, KeySealed string }
	if err := json.Unmarshal(signer, &rec); err != nil {
		t.Fatal(err)
	}
	sealer, err := ca.NewSealer([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := sealer.Open("/ca/signer", rec.KeySealed)
	if err != nil {
		t.Fatalf("the store secret does not open the CA key: %v", err)
	}
	if _, err := ca.Load("trellis.local", []byte(rec.CertPEM), keyPEM); err != nil {
		t.Errorf("the opened key is not the CA's: %v", err)
	}
	if root := readFile(t, a.caFile); !strings.Contains(rec.CertPEM, strings.TrimSpace(root)) {
		t.Error("the stored CA is not the one whose root the data dir's ca.pem holds")
	}
	if _, err := sealer.Open("/ca/issuer", rec.KeySealed); err == nil {
		t.Error("the sealed key opens under another store key")
	}
	other, _ := ca.NewSealer(ca.NewSecret())
	if _, err := other.Open("/ca/signer", rec.KeySealed); err == nil {
		t.Error("the sealed key opens with another secret")
	}

	wrong := filepath.Join(t.TempDir(), "wrong")
	os.WriteFile(wrong, ca.NewSecret(), 0o600)
	shared := filepath.Join(t.TempDir(), "shared")
	os.WriteFile(shared, []byte(secret), 0o644)
	certPEM, otherKey, _ := ca.Generate("trellis.local", time.Now())
	caDir := t.TempDir()
	os.WriteFile(filepath.Join(caDir, "ca.pem"), certPEM, 0o644)
	os.WriteFile(filepath.Join(caDir, "ca-key.pem"), otherKey, 0o600)
	good := copySecret(t, a)
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"no secret", nil, nil, "sealed with a store secret this server was not given: start it with --store-secret-file FILE (mode 0600) or $TRELLIS_STORE_SECRET"},
		{"wrong secret file", []string{"--store-secret-file", wrong}, nil, "does not decrypt the mesh's CA in the store"},
		{"wrong secret in the environment", nil, []string{"TRELLIS_STORE_SECRET=" + string(ca.NewSecret())}, "the store secret from $TRELLIS_STORE_SECRET does not decrypt"},
		{"secret file others may read", []string{"--store-secret-file", shared}, nil, "is readable by others"},
		{"file and environment", []string{"--store-secret-file", good}, []string{"TRELLIS_STORE_SECRET=" + secret}, "give one"},
		{"short secret", nil, []string{"TRELLIS_STORE_SECRET=short"}, "want at least 32"},
		{"a CA of its own", []string{"--store-secret-file", good, "--ca-cert", filepath.Join(caDir, "ca.pem"), "--ca-key", filepath.Join(caDir, "ca-key.pem")}, nil,
			"is not the CA the servers on this store share"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"server", "--data-dir", t.TempDir(), "--listen", fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t)),
				"--etcd-endpoints", endpoint}, tc.args...)
			out, code := runCLI(t, tc.env, args...)
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, output:\n%s\nwant a failure saying %q", code, out, tc.want)
			}
			if strings.Contains(out, secret) {
				t.Error("the output shows the store secret")
			}
		})
	}
	// Nothing the refused servers did changed the store's CA or bundle.
	r, err := a.api.Roots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(r.RootsPEM, "BEGIN CERTIFICATE"); n != 1 {
		t.Errorf("the trust bundle holds %d roots after the refusals, want 1", n)
	}
}

// A root rotation started through server a is followed by server b with
// no restart: b's proxies renew onto the new key, b's API certificate
// chains to the new root, and the bundle ends with the new root alone,
// while a call from b's proxy to a's runs all along without a failure.
func TestSharedCARotationTwoServers(t *testing.T) {
	endpoint := startEtcd(t)
	a := startServer(t, "--etcd-endpoints", endpoint, "--svid-ttl", "12s")
	b := startServerB(t, endpoint, a, "--svid-ttl", "12s", "--store-secret-file", copySecret(t, a))
	svc := filepath.Join(t.TempDir(), "web.yaml")
	writeFile(svc, "kind: Service\nname: web\nspec: {protocol: http}\n")
	a.mustCLI(t, "apply", "-f", svc)
	a.mustCLI(t, "intention", "allow", "client", "web")
	web := startApp(t, "web")
	wp := a.startProxy(t, proxyOpts{service: "web", appPort: web.port})
	up, upPort := loopAddr(t)
	cp := b.startProxy(t, proxyOpts{service: "client", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	trellistest.Eventually(t, 10*time.Second, "call from b's proxy to a's", func() error {
		_, err := get(up)
		return err
	})
	oldFP := certs.Fingerprints([]byte(readFile(t, a.caFile)))[0]
	bPID := b.pid()

	long := startKeepAliveLoad(up, 8)
	fresh := startLoad(up, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "ca", "rotate", "--poll", "200ms")
	cmd.Env = append(os.Environ(), a.env()...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("trellis ca rotate (through a):\n%s", out.String())
	if err != nil {
		t.Fatalf("trellis ca rotate: %v", err)
	}
	long.waitOK(t, 16, "calls after the rotation")
	long.halt()
	fresh.halt()
	for name, l := range map[string]*load{"keep-alive": long, "new-connection": fresh} {
		if f := l.failed.Load(); f != 0 {
			t.Errorf("%d of %d %s requests failed; last: %v", f, f+l.ok.Load(), name, l.lastErr.Load())
		}
	}
	t.Logf("%d keep-alive and %d new-connection requests across the rotation", long.ok.Load(), fresh.ok.Load())
	if b.pid() != bPID {
		t.Fatal("server b was restarted")
	}

	// b's data dir's ca.pem follows: it is the new root.
	var newRootPEM []byte
	trellistest.Eventually(t, 10*time.Second, "b's ca.pem holds the new root", func() error {
		newRootPEM = []byte(readFile(t, b.caFile))
		if certs.Fingerprints(newRootPEM)[0] == oldFP {
			return fmt.Errorf("still the old root")
		}
		return nil
	})
	newRoot, _ := ca.ParseCertificates(newRootPEM)
	if got := certs.Fingerprints([]byte(readFile(t, a.caFile)))[0]; got != certs.Fingerprint(newRoot[0]) {
		t.Errorf("a's ca.pem holds %s, b's %s", got, certs.Fingerprint(newRoot[0]))
	}
	// b's API certificate verifies with the new root alone, signed by
	// the new key itself (after retirement, no cross-signed link).
	pool := x509.NewCertPool()
	pool.AddCert(newRoot[0])
	trellistest.Eventually(t, 10*time.Second, "b's API certificate from the new key", func() error {
		conn, err := tls.Dial("tcp", b.addr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
		if err != nil {
			return err
		}
		defer conn.Close()
		chain := conn.ConnectionState().PeerCertificates
		if err := chain[0].CheckSignatureFrom(newRoot[0]); err != nil {
			return fmt.Errorf("b's API leaf is not signed by the new root: %v", err)
		}
		if len(chain) != 1 {
			return fmt.Errorf("b's API sends %d certificates, want the leaf alone", len(chain))
		}
		return nil
	})
	// b's proxy (and a's) renewed onto the new key.
	for name, admin := range map[string]string{"b's client": cp.admin, "a's web": wp.admin} {
		trellistest.Eventually(t, 15*time.Second, name+" on a certificate of the new root", func() error {
			resp, err := http.Get("http://" + admin + "/certs")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var c struct{ Chain string }
			json.NewDecoder(resp.Body).Decode(&c)
			chain, err := ca.ParseCertificates([]byte(c.Chain))
			if err != nil {
				return err
			}
			return chain[0].CheckSignatureFrom(newRoot[0])
		})
	}
	// No stale root: the bundle holds the new root only, seen through b.
	apiB, _ := client.New(client.Config{Addr: b.addr, Token: a.admin, CAPEM: newRootPEM})
	r, err := apiB.Roots(t.Context())
	if err != nil {
		t.Fatalf("b's API with the new root: %v", err)
	}
	if fps := certs.Fingerprints([]byte(r.RootsPEM)); len(fps) != 1 || fps[0] != certs.Fingerprint(newRoot[0]) {
		t.Errorf("bundle roots %v, want only the new one", fps)
	}
	if !strings.Contains(b.logText(), "signing with the shared CA from the store") {
		t.Error("b's log does not say it followed the rotation")
	}
}

// A data dir of a version before the shared CA (ca.pem and ca-key.pem, no
// store secret, a store without the record) moves its CA into the store
// at the first start, says so, and signs with the same CA: the CLI and a
// proxy that trust the old ca.pem keep working, across a second start.
func TestSharedCAMigratesOldDataDir(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	certPEM, keyPEM, err := ca.Generate("trellis.local", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "ca.pem"), certPEM, 0o644)
	os.WriteFile(filepath.Join(dir, "ca-key.pem"), keyPEM, 0o600)
	oldCA := filepath.Join(t.TempDir(), "old-ca.pem")
	os.WriteFile(oldCA, certPEM, 0o644)

	addr := fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))
	s := &server{proc: start(t, "server", nil, "server", "--data-dir", dir, "--listen", addr, "--log-level", "debug"),
		addr: addr, dataDir: dir, caFile: oldCA}
	s.waitUp(t)
	s.admin = strings.TrimSpace(readFile(t, filepath.Join(dir, "admin-token")))
	s.api, _ = client.New(client.Config{Addr: addr, Token: s.admin, CAPEM: certPEM})
	trellistest.Eventually(t, 10*time.Second, "the API with the old ca.pem", func() error {
		_, err := s.api.Services(t.Context())
		return err
	})
	if !strings.Contains(s.logText(), "migrated the data dir's CA into the store") {
		t.Errorf("the log does not say the CA was migrated:\n%s", tail(s.logText(), 20))
	}
	if _, err := os.Stat(filepath.Join(dir, "ca-key.pem")); err == nil {
		t.Error("ca-key.pem is still in the data dir after the migration")
	}
	if fi, err := os.Stat(filepath.Join(dir, "store-secret")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("store secret: %v, %v; want a file at mode 0600", fi, err)
	}
	s.mustCLI(t, "intention", "allow", "client", "web")
	web := startApp(t, "web")
	s.startProxy(t, proxyOpts{service: "web", appPort: web.port})
	up, upPort := loopAddr(t)
	cp := s.startProxy(t, proxyOpts{service: "client", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	trellistest.Eventually(t, 10*time.Second, "call through the mesh", func() error {
		_, err := get(up)
		return err
	})
	old, _ := ca.ParseCertificates(certPEM)
	issuedByOld := func() error {
		resp, err := http.Get("http://" + cp.admin + "/certs")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var c struct{ Chain string }
		json.NewDecoder(resp.Body).Decode(&c)
		chain, err := ca.ParseCertificates([]byte(c.Chain))
		if err != nil {
			return err
		}
		return chain[0].CheckSignatureFrom(old[0])
	}
	if err := issuedByOld(); err != nil {
		t.Errorf("the proxy's SVID is not from the data dir's CA: %v", err)
	}

	// A second start finds the CA in the store: no migration again, the
	// same CA.
	s.kill(syscall.SIGKILL)
	s.run()
	trellistest.Eventually(t, 30*time.Second, "the API after a restart, with the old ca.pem", func() error {
		_, err := s.api.Services(t.Context())
		return err
	})
	if n := strings.Count(s.logText(), "migrated the data dir's CA"); n != 1 {
		t.Errorf("the log says %d times that it migrated, want once", n)
	}
	if got := readFile(t, filepath.Join(dir, "ca.pem")); got != string(certPEM) {
		t.Error("the data dir's ca.pem changed across the restart")
	}
	if out, code := s.cli(t, "get", "services"); code != 0 {
		t.Errorf("CLI with the old ca.pem after the restart: %s", out)
	}
}
