//go:build linux

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// startKeepAliveLoad sends requests from n clients, each over one
// long-lived keep-alive connection, until halted.
func startKeepAliveLoad(addr string, n int) *load {
	return runLoad(n, 20*time.Millisecond, func() (func() error, func()) {
		tr := &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		return func() error { _, err := fetch(c, "http://"+addr+"/", ""); return err }, tr.CloseIdleConnections
	})
}

// A whole root rotation, `trellis ca rotate`, under 64 long-lived
// keep-alive clients and a steady rate of new connections: nothing fails,
// every proxy ends on a certificate of the new root, and the old root is
// out of the bundle.
func TestAttackRootRotation(t *testing.T) {
	s := startServer(t, "--svid-ttl", "12s")
	dir := t.TempDir()
	svc := filepath.Join(dir, "web.yaml")
	writeFile(svc, "kind: Service\nname: web\nspec: {protocol: http}\n")
	s.mustCLI(t, "apply", "-f", svc)
	s.mustCLI(t, "intention", "allow", "client", "web")
	web := startApp(t, "web")
	wp := s.startProxy(t, proxyOpts{service: "web", appPort: web.port})
	up, upPort := loopAddr(t)
	cp := s.startProxy(t, proxyOpts{service: "client", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	trellistest.Eventually(t, 10*time.Second, "call through the mesh", func() error {
		_, err := get(up)
		return err
	})
	oldRootPEM, _ := os.ReadFile(s.caFile)
	oldFP := certs.Fingerprints(oldRootPEM)[0]

	long := startKeepAliveLoad(up, 64)
	fresh := startLoad(up, 2)
	ins, err := s.api.Instances(t.Context(), "web")
	if err != nil || len(ins) != 1 {
		t.Fatalf("instances of web: %v, %v", ins, err)
	}
	// The client's mTLS connections to web now: leaves of the old key,
	// verified by the old root only.
	before := connsTuples(t, ins[0].Port)
	if len(before) == 0 {
		t.Fatal("no mTLS connection to web before the rotation")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "ca", "rotate", "--poll", "200ms")
	cmd.Env = append(os.Environ(), s.env()...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Logf("trellis ca rotate:\n%s", out.String())
	if err != nil {
		t.Fatalf("trellis ca rotate: %v", err)
	}
	// A little more traffic once the old root is gone.
	n := long.ok.Load()
	trellistest.Eventually(t, 10*time.Second, "traffic after the rotation", func() error {
		if got := long.ok.Load() - n; got < 64 {
			return fmt.Errorf("%d requests since the rotation ended", got)
		}
		return nil
	})
	for c := range connsTuples(t, ins[0].Port) {
		if before[c] {
			t.Errorf("connection %s, made under the old root, is still open after its removal", c)
		}
	}
	long.halt()
	fresh.halt()
	if f := long.failed.Load(); f != 0 {
		t.Errorf("%d of %d keep-alive requests failed; last: %v", f, f+long.ok.Load(), long.lastErr.Load())
	}
	if f := fresh.failed.Load(); f != 0 {
		t.Errorf("%d of %d new-connection requests failed; last: %v", f, f+fresh.ok.Load(), fresh.lastErr.Load())
	}
	t.Logf("%d keep-alive and %d new-connection requests across the rotation", long.ok.Load(), fresh.ok.Load())

	// The bundle holds the new root only; ca.pem in the data dir is it.
	newRootPEM, _ := os.ReadFile(s.caFile)
	newFP := certs.Fingerprints(newRootPEM)[0]
	if newFP == oldFP {
		t.Fatal("the data dir's ca.pem still holds the old root")
	}
	api, err := client.New(client.Config{Addr: s.addr, Token: s.admin, CAPEM: newRootPEM})
	if err != nil {
		t.Fatal(err)
	}
	r, err := api.Roots(t.Context())
	if err != nil {
		t.Fatalf("the API with the new root: %v", err)
	}
	if fps := certs.Fingerprints([]byte(r.RootsPEM)); len(fps) != 1 || fps[0] != newFP {
		t.Errorf("bundle roots %v, want only the new %s", fps, newFP)
	}
	newRoot, _ := ca.ParseCertificates(newRootPEM)
	for _, admin := range []string{wp.admin, cp.admin} {
		trellistest.Eventually(t, 15*time.Second, "proxy on a certificate of the new root", func() error {
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
	// Rotating again works: the retired rotation is not in the way.
	if out, code := s.cli(t, "ca", "remove-root", newFP); code == 0 || !strings.Contains(out, "signs now") {
		t.Errorf("removing the signing root: exit %d: %s", code, out)
	}
}
