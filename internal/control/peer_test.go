package control

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/stats"
	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// startExternalEtcd runs Debian's etcd on loopback, as the HA setup's
// external etcd, and returns its URL.
func startExternalEtcd(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd binary not found; install Debian's etcd-server (.ci/run does)")
	}
	client, peer := fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t)), fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))
	cmd := exec.Command(bin, "--name", "ext", "--data-dir", filepath.Join(t.TempDir(), "etcd"),
		"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
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
	return "http://" + client
}

// startPeerServer runs a server on the etcd at endpoint, with the store
// secret in secretDir when set, at a 1 s stats interval.
func startPeerServer(t *testing.T, endpoint, secretDir string) *Server {
	t.Helper()
	cfg := Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", EtcdEndpoints: []string{endpoint}, Out: io.Discard,
		LeaseTTL: 2 * time.Second, StatsInterval: time.Second}
	if secretDir != "" {
		cfg.StoreSecretFile = filepath.Join(secretDir, StoreSecretFileName)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := startRole(srv.Run)
	t.Cleanup(func() { r.stop(t, "server") })
	select {
	case <-srv.Ready():
	case err := <-r.done:
		t.Fatalf("server: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("server not ready")
	}
	return srv
}

// blackHole accepts connections and never answers: a peer that froze.
func blackHole(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			held = append(held, c)
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String(), &n
}

// Two servers on one etcd share their proxies' summaries; a third
// registered server that accepts connections and never answers delays
// none of the pushes to the live one.
func TestPeersShareSummaries(t *testing.T) {
	endpoint := startExternalEtcd(t)
	a := startPeerServer(t, endpoint, "")
	b := startPeerServer(t, endpoint, a.cfg.DataDir)

	// The frozen peer, registered as a server would be.
	hole, conns := blackHole(t)
	st, err := store.NewEtcd(t.Context(), store.EtcdConfig{Endpoints: []string{endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rec, _ := json.Marshal(serverRecord{ID: "s-frozen", Address: hole})
	if err := st.Put(t.Context(), serverKey("s-frozen"), rec, 0); err != nil {
		t.Fatal(err)
	}

	// A's proxy of web: 10 requests to api a second; B's proxy of api:
	// the same, received.
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	feedDone := make(chan struct{})
	go func() {
		defer close(feedDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				a.stats.Add(&stats.Summary{Instance: "web-1", Service: "web", IntervalMS: 1000, Entries: []stats.Entry{
					{Key: stats.Key{Direction: stats.Outbound, Source: "web", Destination: "api"}, Counts: stats.Counts{Codes: [5]uint64{0, 10}}},
				}}, now)
				b.stats.Add(&stats.Summary{Instance: "api-1", Service: "api", IntervalMS: 1000, Entries: []stats.Entry{
					{Key: stats.Key{Direction: stats.Inbound, Source: "web", Destination: "api"}, Counts: stats.Counts{Codes: [5]uint64{0, 9, 0, 0, 1}}},
				}}, now)
			}
		}
	}()
	defer func() { stop(); <-feedDone }()

	for name, s := range map[string]*Server{"a": a, "b": b} {
		trellistest.Eventually(t, 20*time.Second, "server "+name+" answers for both servers' proxies", func() error {
			got := s.stats.Stats(stats.Query{Window: time.Minute}, time.Now())
			if len(got.Edges) != 1 || len(got.Services) != 1 {
				return fmt.Errorf("%d edges, %d services, want 1 and 1", len(got.Edges), len(got.Services))
			}
			e, svc := got.Edges[0], got.Services[0]
			if e.Requests < 30 || svc.Requests < 30 {
				return fmt.Errorf("edge %d requests, service %d, want 30 or more", e.Requests, svc.Requests)
			}
			// Each side counted once, whatever the duplicates.
			if e.RequestsPerSecond < 9 || e.RequestsPerSecond > 11 || svc.RequestsPerSecond < 9 || svc.RequestsPerSecond > 11 {
				return fmt.Errorf("edge %.2f/s, service %.2f/s, want 10/s", e.RequestsPerSecond, svc.RequestsPerSecond)
			}
			return nil
		})
	}
	if conns.Load() == 0 {
		t.Error("no push reached the frozen peer: the test did not test it")
	}
	// Pushes to the live peer keep their pace while the frozen one's
	// hang for peerTimeout each: at least three in less than one.
	accepted := func() float64 { return testutil.ToFloat64(b.peerm.received.WithLabelValues("accepted")) }
	from, start := accepted(), time.Now()
	trellistest.Eventually(t, peerTimeout, "three pushes to b while the frozen peer hangs", func() error {
		if n := accepted() - from; n < 3 {
			return fmt.Errorf("%v pushes in %v", n, time.Since(start))
		}
		return nil
	})
	if f := testutil.ToFloat64(a.peerm.pushes.WithLabelValues("failed")); f == 0 {
		t.Log("no push to the frozen peer has timed out yet")
	}
}

// Only a server of the mesh may push: without a certificate, with a
// workload's SVID of the same CA, or with the server name but no
// certificate, a push is refused, and none is filed.
func TestPeerPushRefused(t *testing.T) {
	endpoint := startExternalEtcd(t)
	srv := startPeerServer(t, endpoint, "")
	caPEM, err := os.ReadFile(filepath.Join(srv.cfg.DataDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	body, _ := (&stats.Push{Origin: "s-forged", IntervalMS: 1000, Slots: []stats.PushSlot{{
		Slot: time.Now().UnixNano() / int64(time.Second), Entries: []stats.Entry{
			{Key: stats.Key{Direction: stats.Outbound, Source: "web", Destination: "api"}, Counts: stats.Counts{Codes: [5]uint64{0, 1000}}},
		}}}}).Encode()

	// A workload's SVID, as a compromised proxy would hold.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	web, err := identity.New(srv.signer().TrustDomain(), "web")
	if err != nil {
		t.Fatal(err)
	}
	chain, err := srv.signer().SignSVID(ca.SignRequest{CSR: csr, ID: web})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := certs.EncodeKey(key)
	svid, err := certs.KeyPair(chain, keyPEM)
	if err != nil {
		t.Fatal(err)
	}

	post := func(sni string, cert *tls.Certificate) (int, string, error) {
		tc := &tls.Config{RootCAs: roots, ServerName: "localhost"}
		if sni != "" {
			tc.ServerName, tc.InsecureSkipVerify = sni, true
		}
		if cert != nil {
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		defer c.CloseIdleConnections()
		resp, err := c.Post("https://"+srv.Addr()+pushPath, "application/json", bytes.NewReader(body))
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	for _, tc := range []struct {
		name string
		sni  string
		cert *tls.Certificate
		want int // 0: the handshake fails
	}{
		{"no certificate", "", nil, http.StatusUnauthorized},
		{"peer name, no certificate", peerSNI, nil, 0},
		{"workload SVID", peerSNI, svid, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, msg, err := post(tc.sni, tc.cert)
			if tc.want == 0 {
				if err == nil {
					t.Errorf("got %d %s, want the handshake refused", code, msg)
				}
				return
			}
			if err != nil || code != tc.want {
				t.Errorf("got %d %s (%v), want %d", code, msg, err, tc.want)
			}
		})
	}
	// The server's own certificate is accepted: the refusals above were
	// for the identity, not the push.
	code, msg, err := post(peerSNI, srv.serving.Load())
	if err != nil || code != http.StatusNoContent {
		t.Errorf("with a server's certificate: got %d %s (%v), want 204", code, msg, err)
	}
	if got := testutil.ToFloat64(srv.peerm.received.WithLabelValues("refused")); got != 2 {
		t.Errorf("refused pushes counted: %v, want 2 (the third never reached HTTP)", got)
	}
}
