package client_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// fakeAPI serves handler over TLS with a control plane's certificate.
func fakeAPI(t *testing.T, handler http.HandlerFunc) *client.Client {
	t.Helper()
	return fakeAPIWith(t, handler, client.Config{})
}

func fakeAPIWith(t *testing.T, handler http.HandlerFunc, cfg client.Config) *client.Client {
	t.Helper()
	mesh := trellistest.NewCA(t, "trellis.local")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := mesh.SignServing(ca.ServingRequest{PublicKey: &key.PublicKey, DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := certs.EncodeKey(key)
	cert, err := certs.KeyPair(chain, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(handler)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	cfg.Addr, cfg.Token, cfg.CAPEM = "localhost:"+port, "trellis_secretsecretsecret", mesh.RootsPEM()
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A write answered "outcome unknown" is tried again with the same
// idempotency key (which the server applies at most once) until it gets a
// definite answer; a not-applied one is not retried.
func TestWriteOfUnknownOutcomeIsRetriedWithItsKey(t *testing.T) {
	for _, tc := range []struct {
		name      string
		answers   []string // outcome of each try; "" is success
		wantTries int
		wantErr   bool
	}{
		{"unknown, then applied", []string{"unknown", ""}, 2, false},
		{"not applied", []string{"not-applied"}, 1, true},
		{"unknown every time", []string{"unknown", "unknown", "unknown", "unknown"}, 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				mu   sync.Mutex
				keys []string
			)
			c := fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				keys = append(keys, r.Header.Get("Idempotency-Key"))
				w.Header().Set("Content-Type", "application/json")
				if out := tc.answers[len(keys)-1]; out != "" {
					w.WriteHeader(http.StatusServiceUnavailable)
					w.Write([]byte(`{"error":"store unavailable","outcome":"` + out + `","writeKey":"k"}`))
					return
				}
				w.Write([]byte(`{"deleted":"Service/web"}`))
			})
			err := c.Delete(t.Context(), "Service", "web")
			if (err != nil) != tc.wantErr {
				t.Fatalf("got error %v, want error: %v", err, tc.wantErr)
			}
			if e := (*client.Error)(nil); err != nil && (!errors.As(err, &e) || e.Outcome == "") {
				t.Errorf("error %v does not carry the outcome", err)
			}
			if len(keys) != tc.wantTries {
				t.Fatalf("got %d tries, want %d", len(keys), tc.wantTries)
			}
			for _, k := range keys {
				if len(k) < 16 || k != keys[0] {
					t.Fatalf("idempotency keys %q: want one key of 16+ characters, the same on every try", keys)
				}
			}
		})
	}
}

// A read the server marks stale reaches the caller's hook.
func TestStaleAnswerIsReported(t *testing.T) {
	var got []string
	c := fakeAPIWith(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Idempotency-Key") != "" {
			t.Errorf("a read carries an idempotency key")
		}
		w.Header().Set("Trellis-Stale", "store not reached for 4s")
		w.Write([]byte(`[]`))
	}, client.Config{OnStale: func(w string) { got = append(got, w) }})
	if _, err := c.Services(t.Context()); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "store not reached for 4s" {
		t.Fatalf("OnStale got %q, want the header", got)
	}
}
