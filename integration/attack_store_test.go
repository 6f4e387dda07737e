//go:build linux

package integration

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/store/storetest"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// TestAttackStoreTokenForgery is the review's attack on the real server: a
// local process finds the server's sockets as ss would, writes the hash of a
// token it made up into the store as an admin token record through each of
// them, then calls the API with that token. Every listener of the server
// process (the API's, etcd's client and peer ports) must refuse the store
// client; the API must refuse the token; the refusals are counted and
// logged; and the server keeps serving.
func TestAttackStoreTokenForgery(t *testing.T) {
	s := startServer(t)
	secret, hash := storeForgeSecret(t)
	record, _ := json.Marshal(v1.Token{ID: hash[:12], Admin: true, Description: "forged", CreatedAt: time.Now().UTC()})
	key := "/trellis/tokens/" + hash

	l, err := trellistest.ListenersOf(s.pid())
	if err != nil {
		t.Fatal(err)
	}
	// The API, and etcd's client and peer ports.
	if len(l.TCP) < 3 {
		t.Fatalf("server listens on %v; want the API and etcd's client and peer ports at least", l.TCP)
	}
	t.Run("store", func(t *testing.T) {
		for _, addr := range append(l.TCP, l.Unix...) {
			t.Run(addr, func(t *testing.T) {
				t.Parallel()
				if got := storetest.Intrude(t.Context(), addr, key, string(record)); len(got) > 0 {
					t.Errorf("the store took a forged record through %s: %v", addr, got)
				}
				if addr == s.addr {
					return // the API answers HTTP; it is checked below
				}
				if got := storetest.IntrudeHTTP(t.Context(), addr); len(got) > 0 {
					t.Errorf("etcd's HTTP handlers at %s answered a process without credentials: %v", addr, got)
				}
			})
		}
	})

	// A token made through the API after the attempts works once the
	// server's view of the store has caught up past them: from then on, a
	// forged record written by any of them would be in effect too.
	nt, err := s.api.CreateToken(t.Context(), v1.TokenRequest{Admin: true, Description: "made after the attack"})
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(s.caFile)
	after, _ := client.New(client.Config{Addr: s.addr, Token: nt.Secret, CAPEM: caPEM})
	trellistest.Eventually(t, 10*time.Second, "the new token in effect", func() error {
		_, err := after.Tokens(t.Context())
		return err
	})
	forged, _ := client.New(client.Config{Addr: s.addr, Token: secret, CAPEM: caPEM})
	_, err = forged.Tokens(t.Context())
	if apiErr, ok := errors.AsType[*client.Error](err); !ok || apiErr.Status != http.StatusUnauthorized {
		t.Errorf("API call with the forged token: err = %v, want 401", err)
	}
	if err := storeForgedAbsent(t, s, hash); err != nil {
		t.Error(err)
	}

	// Refused, counted and logged, per listener.
	metrics := storeMetrics(t, s)
	for _, listener := range []string{"client", "peer"} {
		logged := regexp.MustCompile(`msg="store connection refused" .*listener=` + listener + ` remote=127\.0\.0\.1:\d+ reason="tls: `)
		if !logged.MatchString(s.logText()) {
			t.Errorf("no log line for the refused connections on etcd's %s listener", listener)
		}
		if !strings.Contains(metrics, `trellis_store_connections_refused_total{listener="`+listener+`"}`) {
			t.Errorf("no trellis_store_connections_refused_total for the %s listener in:\n%s", listener, metrics)
		}
	}

	// The server still works, and its data dir is its own.
	if _, err := s.api.Services(t.Context()); err != nil {
		t.Errorf("server after the attack: %v", err)
	}
	if fi, err := os.Stat(s.dataDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
}

// TestStoreDataDirOthersMayWrite: a data dir that others may write to is
// refused (files planted in it, such as an admin-token, would be trusted),
// before anything is read from it.
func TestStoreDataDirOthersMayWrite(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	out, code := runCLI(t, nil, "server", "--data-dir", dir, "--listen", fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t)))
	if code == 0 || !strings.Contains(out, dir) || !strings.Contains(out, "chmod 700") {
		t.Errorf("server on a 0777 data dir: exit %d, output %q; want a refusal naming the dir and the fix", code, out)
	}
	if _, err := os.Stat(dir + "/etcd"); err == nil {
		t.Error("the server started etcd in the refused dir")
	}
}

// storeForgeSecret makes up a token secret of the right shape and returns
// it with the hash the server would store it under.
func storeForgeSecret(t *testing.T) (secret, hash string) {
	b := make([]byte, 24)
	rand.Read(b)
	secret = "trellis_" + base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(secret))
	return secret, hex.EncodeToString(sum[:])
}

// storeForgedAbsent checks, through the admin API, that no token with the
// forged record's ID exists.
func storeForgedAbsent(t *testing.T, s *server, hash string) error {
	toks, err := s.api.Tokens(t.Context())
	if err != nil {
		return err
	}
	for _, tok := range toks {
		if tok.ID == hash[:12] {
			return fmt.Errorf("the forged token %s is listed: %+v", tok.ID, tok)
		}
	}
	return nil
}

// storeMetrics returns the server's Prometheus exposition.
func storeMetrics(t *testing.T, s *server) string {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+s.addr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+s.admin)
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: s.api.TLSConfig()}}).Do(req)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
