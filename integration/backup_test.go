//go:build linux

package integration

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// A backup taken through the API, restored offline into a fresh data dir,
// serves the same mesh: the resources, and the old admin token.
func TestBackupAndRestore(t *testing.T) {
	a := startServer(t)
	a.mustCLI(t, "intention", "allow", "client", "web")
	svc := filepath.Join(t.TempDir(), "svc.yaml")
	writeFile(svc, "kind: Service\nname: web\nspec:\n  protocol: http\n")
	a.mustCLI(t, "apply", "-f", svc)
	a.mustCLI(t, "token", "create", "--service", "web", "-o", filepath.Join(t.TempDir(), "web-token"))

	backup := filepath.Join(t.TempDir(), "mesh.snap")
	out := a.mustCLI(t, "backup", backup)
	if !strings.Contains(out, "backup saved") {
		t.Fatalf("trellis backup: %s", out)
	}
	if fi, err := os.Stat(backup); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v, mode %v; want 0600", err, fi.Mode())
	}
	a.kill(syscall.SIGTERM)

	// A fresh data dir, with the store secret carried over (the CA is in
	// the store, sealed with it) and the root for the CLI.
	dir := t.TempDir()
	out, code := runCLI(t, nil, "restore", backup, "--data-dir", dir)
	if code != 0 {
		t.Fatalf("trellis restore: exit %d: %s", code, out)
	}
	if out, code := runCLI(t, nil, "restore", backup, "--data-dir", dir); code == 0 || !strings.Contains(out, "exists") {
		t.Errorf("a second restore into the same dir: exit %d: %s; want refused", code, out)
	}
	for _, f := range []string{"ca.pem", "store-secret"} {
		b, err := os.ReadFile(filepath.Join(a.dataDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	addr := fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))
	start(t, "restored", nil, "server", "--data-dir", dir, "--listen", addr, "--log-level", "debug")
	trellistest.Eventually(t, 60*time.Second, "restored server listening", func() error {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	})
	if _, err := os.Stat(filepath.Join(dir, "admin-token")); err == nil {
		t.Error("the restored server made a new admin token; the old one is in the store")
	}
	api, err := client.New(client.Config{Addr: addr, Token: a.admin, CAPEM: mustRead(t, a.caFile)})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	trellistest.Eventually(t, 20*time.Second, "restored resources, old admin token", func() error {
		got = got[:0]
		for _, kind := range []string{"Service", "Intention"} {
			rs, err := api.List(t.Context(), kind)
			if err != nil {
				return err
			}
			for _, r := range rs {
				got = append(got, kind+"/"+r.Name)
			}
		}
		if len(got) != 2 {
			return fmt.Errorf("got %v, want the Service and the Intention", got)
		}
		return nil
	})
	toks, err := api.Tokens(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 2 {
		t.Errorf("restored %d tokens, want the admin's and the service's", len(toks))
	}

	// A rotation keeps its new key in the store sealed, like the CA's:
	// a backup taken during it carries no private key in clear.
	env := []string{"TRELLIS_ADDR=" + addr, "TRELLIS_TOKEN=" + a.admin, "TRELLIS_CACERT=" + a.caFile, "HOME=" + dir}
	if out, code := runCLI(t, env, "ca", "rotate", "--no-retire"); code != 0 {
		t.Fatalf("trellis ca rotate: exit %d: %s", code, out)
	}
	during := filepath.Join(t.TempDir(), "x.snap")
	if out, code := runCLI(t, env, "backup", during); code != 0 {
		t.Fatalf("backup during a rotation: exit %d: %s", code, out)
	}
	if b := mustRead(t, during); bytes.Contains(b, []byte("PRIVATE KEY-----")) {
		t.Error("a backup holds a private key in clear")
	}
}
