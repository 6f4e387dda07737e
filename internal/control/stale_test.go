package control

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// /healthz answers without a token: while the store is away it says so,
// but not the store's error, which names etcd's addresses, its TLS
// trouble or its login.
func TestHealthzLeaksNoStoreError(t *testing.T) {
	const secretish = "dial tcp 10.9.8.7:2379: connect: connection refused"
	for _, tc := range []struct {
		name     string
		watching bool
		last     time.Duration
		want     string
	}{
		{"watch down", false, 0, "store watch down"},
		{"not reached", true, time.Minute, "store not reached"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newState(slog.New(slog.NewTextHandler(io.Discard, nil)))
			st.contact(time.Now().Add(-tc.last))
			st.watching.Store(tc.watching)
			st.storeFailed(errors.New(secretish))
			s := &Server{state: st, movers: newMovers()}
			w := httptest.NewRecorder()
			s.healthz(w, httptest.NewRequest(http.MethodGet, "/healthz", nil))
			body := w.Body.String()
			if w.Code != http.StatusServiceUnavailable || !strings.Contains(body, tc.want) {
				t.Errorf("got %d %s, want 503 saying %q", w.Code, body, tc.want)
			}
			if strings.Contains(body, "10.9.8.7") || strings.Contains(body, "refused") {
				t.Errorf("/healthz without a token shows the store's error: %s", body)
			}
			// An API answer (to a token) still says why.
			if why := st.staleness(time.Now()); !strings.Contains(why, secretish) {
				t.Errorf("staleness %q lacks the store's error", why)
			}
		})
	}
}

// A server whose view of the store is stale may still hold a token that
// was revoked meanwhile. It answers reads (marked stale), but on a token
// the store no longer holds it issues no certificate (an identity for up
// to a day) and registers no instance (traffic to whoever holds the
// token) because it did not hear of the revocation.
func TestStaleServerRefusesRevokedToken(t *testing.T) {
	rs := startRegServer(t, Config{})
	secret := rs.token(t, "web")
	hash := hashSecret(secret)
	var rec tokenRecord
	trellistest.Eventually(t, 10*time.Second, "the mirror has the token", func() error {
		var ok bool
		if rec, ok = rs.srv.state.token(hash); !ok {
			return errors.New("not yet")
		}
		return nil
	})
	sign := func() (int, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			t.Fatal(err)
		}
		csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
		b, _ := json.Marshal(v1.SignRequest{Service: "web", CSR: string(csr)})
		r := httptest.NewRequest(http.MethodPost, "/v1/ca/sign", bytes.NewReader(b))
		r.Header.Set("Authorization", "Bearer "+secret)
		w := httptest.NewRecorder()
		rs.srv.routes().ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	if code, body := sign(); code != http.StatusOK {
		t.Fatalf("sign with a live token: %d %s", code, body)
	}
	// Stale: the watch is down, and the mirror still holds the token the
	// store has lost.
	if err := rs.srv.store.Delete(t.Context(), tokenKey(hash)); err != nil {
		t.Fatal(err)
	}
	trellistest.Eventually(t, 10*time.Second, "the mirror drops the token", func() error {
		if _, ok := rs.srv.state.token(hash); ok {
			return errors.New("still there")
		}
		return nil
	})
	rs.srv.state.mu.Lock()
	rs.srv.state.tokens[hash] = rec
	rs.srv.state.mu.Unlock()
	rs.srv.state.watching.Store(false)
	defer rs.srv.state.watching.Store(true)

	t.Run("sign", func(t *testing.T) {
		if code, body := sign(); code == http.StatusOK || !strings.Contains(body, "revoked") {
			t.Errorf("sign on a stale server with a revoked token: %d %s, want refused as revoked", code, body)
		}
	})
	t.Run("register", func(t *testing.T) {
		_, err := rs.open(t, secret, webReg(strings.Repeat("3c", 16)))
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("stream on a stale server with a revoked token: %v, want Unauthenticated", err)
		}
		if _, err := rs.srv.store.Get(t.Context(), instanceKey("web", "web-1")); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("instance of a revoked token in the store: %v, want none", err)
		}
	})
}
