package client_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

func TestParseServers(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  string // a substring of the error; "" for none
	}{
		{in: "cp:7700", want: []string{"cp:7700"}},
		{in: "a:1,b:2, c:3 ", want: []string{"a:1", "b:2", "c:3"}},
		{in: "a:1,a:1,b:2", want: []string{"a:1", "b:2"}},
		{in: "https://cp.example:7700", want: []string{"cp.example:7700"}},
		{in: "https://cp.example", want: []string{"cp.example:443"}},
		{in: "https://cp.example/", want: []string{"cp.example:443"}},
		{in: "cp.example", want: []string{"cp.example:443"}},
		{in: "[::1]:7700,10.0.0.1:7700", want: []string{"[::1]:7700", "10.0.0.1:7700"}},
		{in: "https://[::1]:7700", want: []string{"[::1]:7700"}},
		{in: "", err: "no server address"},
		{in: " , ", err: "entry 1 is empty"},
		{in: "a:1,,b:2", err: "entry 2 is empty"},
		{in: "a:1,", err: "entry 2 is empty"},
		{in: "http://cp:7700", err: `entry 1 "http://cp:7700": the API is served over https only`},
		{in: "a:1,b:0", err: `entry 2 "b:0": port "0"`},
		{in: "a:70000", err: `port "70000"`},
		{in: "a:07700", err: `port "07700"`},
		{in: "a:http", err: `port "http"`},
		{in: "::1", err: "want host:port"},
		{in: "[::1]", err: "want host:port"},
		{in: ":7700", err: "no host"},
		{in: "a b:1", err: "not a DNS name or IP"},
		{in: "a/b:1", err: "not a DNS name or IP"},
		{in: "https://u@cp:1", err: "nothing after it"},
		{in: "https://cp:1/v1", err: "nothing after it"},
		{in: "https://cp:1?x", err: "nothing after it"},
		{in: strings.Repeat("a:1,", 64) + "a:1", want: []string{"a:1"}},
		{in: func() string {
			var s []string
			for i := range 65 {
				s = append(s, fmt.Sprintf("h%d:1", i))
			}
			return strings.Join(s, ",")
		}(), err: "at most 64"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := client.ParseServers(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// FuzzParseServers: any input either fails or gives entries that parse
// again to themselves, each a valid host:port.
func FuzzParseServers(f *testing.F) {
	for _, s := range []string{"cp:7700", "a:1, b:2", "https://cp", "[::1]:1", "", ",", "http://x:1", "a:1,a:1", "https://[fe80::1]:8", "x:65535", "é:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := client.ParseServers(in)
		if err != nil {
			return
		}
		if len(got) == 0 {
			t.Fatalf("%q: no entries and no error", in)
		}
		again, err := client.ParseServers(strings.Join(got, ","))
		if err != nil || !slices.Equal(again, got) {
			t.Fatalf("%q -> %q -> %q, %v", in, got, again, err)
		}
		for _, e := range got {
			if _, _, err := net.SplitHostPort(e); err != nil {
				t.Fatalf("%q: entry %q: %v", in, e, err)
			}
		}
	})
}

// apiServer serves h over TLS with a control plane certificate for
// localhost, and returns its localhost:port.
func apiServer(t *testing.T, mesh *trellistest.CA, h http.HandlerFunc) string {
	t.Helper()
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
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return "localhost:" + port
}

// A client given a list sends a request to the next server when the
// current one cannot take it, and stays with the one that answered; a
// write goes on only when nothing was sent (a failed dial).
func TestClientFailsOver(t *testing.T) {
	mesh := trellistest.NewCA(t, "trellis.local")
	var liveHits, busyHits atomic.Int32
	live := apiServer(t, mesh, func(w http.ResponseWriter, r *http.Request) {
		liveHits.Add(1)
		w.Write([]byte(`{"trustDomain":"trellis.local","roots":""}`))
	})
	busy := apiServer(t, mesh, func(w http.ResponseWriter, r *http.Request) {
		busyHits.Add(1)
		http.Error(w, `{"error":"control plane stopping"}`, http.StatusServiceUnavailable)
	})
	dead := fmt.Sprintf("localhost:%d", trellistest.FreePort(t))
	newClient := func(addrs ...string) *client.Client {
		c, err := client.New(client.Config{Addr: strings.Join(addrs, ","), Token: "trellis_secretsecretsecret", CAPEM: mesh.RootsPEM()})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	t.Run("read past a dead and a stopping server", func(t *testing.T) {
		c := newClient(dead, busy, live)
		if _, err := c.Roots(t.Context()); err != nil {
			t.Fatalf("Roots: %v", err)
		}
		if got := c.Host(); got != live {
			t.Errorf("Host() = %s after the answer, want %s", got, live)
		}
		before := busyHits.Load()
		if _, err := c.Roots(t.Context()); err != nil {
			t.Fatalf("Roots again: %v", err)
		}
		if busyHits.Load() != before {
			t.Error("second request went to the stopping server again, want the one that answered")
		}
	})
	t.Run("write past a dead server", func(t *testing.T) {
		c := newClient(dead, live)
		before := liveHits.Load()
		if err := c.AddRoots(t.Context(), mesh.RootsPEM()); err != nil {
			t.Fatalf("AddRoots: %v", err)
		}
		if liveHits.Load() != before+1 {
			t.Errorf("live server got %d writes, want 1", liveHits.Load()-before)
		}
	})
	t.Run("write answered is not sent again", func(t *testing.T) {
		c := newClient(busy, live)
		before := liveHits.Load()
		err := c.AddRoots(t.Context(), mesh.RootsPEM())
		var ae *client.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
			t.Fatalf("AddRoots: %v, want the first server's 503", err)
		}
		if liveHits.Load() != before {
			t.Error("a write the first server answered went to the second too")
		}
	})
	t.Run("all down names each", func(t *testing.T) {
		dead2 := fmt.Sprintf("localhost:%d", trellistest.FreePort(t))
		_, err := newClient(dead, dead2).Roots(t.Context())
		if err == nil || !strings.Contains(err.Error(), dead) || !strings.Contains(err.Error(), dead2) {
			t.Fatalf("err = %v, want one naming %s and %s", err, dead, dead2)
		}
	})
	t.Run("prefer", func(t *testing.T) {
		c := newClient(dead, live)
		c.Prefer(live)
		if c.Host() != live {
			t.Errorf("Host() = %s after Prefer, want %s", c.Host(), live)
		}
		c.Prefer("elsewhere:1")
		if c.Host() != live {
			t.Errorf("Host() = %s after Prefer of a server not in the list, want %s", c.Host(), live)
		}
		if got := c.Servers(); !slices.Equal(got, []string{dead, live}) {
			t.Errorf("Servers() = %q", got)
		}
	})
}
