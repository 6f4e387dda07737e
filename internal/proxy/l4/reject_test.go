package l4

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// syncBuffer is a log sink safe for the connection goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// countingApp counts the bytes and connections that reach it.
func countingApp(t *testing.T) (string, *atomic.Int64) {
	var n atomic.Int64
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return trellistest.Serve(t, l, func(c net.Conn) {
		n.Add(1)
		b, _ := io.Copy(io.Discard, c)
		n.Add(b)
	}), &n
}

// A client whose certificate is a forged SVID (signed by the mesh CA, so
// only the standard's rules can refuse it) is refused in the handshake,
// counted by reason and logged, and nothing reaches the app.
func TestInboundRefusesForgedClientSVIDs(t *testing.T) {
	ca := trellistest.NewCA(t, "td")
	app, reached := countingApp(t)
	m := NewMetrics(prometheus.NewRegistry())
	var logs syncBuffer
	in := &Inbound{
		TLS: ca.Source(t, "web").ServerConfig(nil, ALPN), Authorize: allowAll, Target: app, Metrics: m,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
	}
	pl, _ := net.Listen("tcp", "127.0.0.1:0")
	go in.Serve(pl)
	t.Cleanup(func() { pl.Close() })

	forged := map[string]trellistest.ForgeSpec{}
	spec := func(id string, f func(*trellistest.ForgeSpec)) trellistest.ForgeSpec {
		s := trellistest.SVIDSpec(id)
		f(&s)
		return s
	}
	forged["serverAuth only"] = spec("spiffe://td/svc/c", func(s *trellistest.ForgeSpec) { s.EKU = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} })
	forged["codeSigning only"] = spec("spiffe://td/svc/c", func(s *trellistest.ForgeSpec) { s.EKU = []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning} })
	forged["empty fragment"] = spec("spiffe://td/svc/c#", func(*trellistest.ForgeSpec) {})
	forged["uppercase scheme"] = spec("SPIFFE://td/svc/c", func(*trellistest.ForgeSpec) {})
	forged["leaf is a CA"] = spec("spiffe://td/svc/c", func(s *trellistest.ForgeSpec) { s.IsCA = true })
	n := 0
	for name, s := range forged {
		leaf := trellistest.Forge(t, s, ca.Forger(t))
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", pl.Addr().String(), &tls.Config{
			InsecureSkipVerify: true, NextProtos: []string{ALPN}, Certificates: []tls.Certificate{*leaf.TLS()},
		})
		if err == nil {
			// TLS 1.3: the client finishes first; the server's verdict
			// arrives as an alert on the first read.
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Errorf("%s: client saw %v, want a bad certificate alert", name, err)
		}
		n++
		trellistest.Eventually(t, 5*time.Second, name+" counted", func() error {
			if got := testutil.ToFloat64(m.Rejections.WithLabelValues("server", "not_svid")); got != float64(n) {
				return fmt.Errorf("rejections{server,not_svid} = %v, want %d", got, n)
			}
			return nil
		})
	}
	if !strings.Contains(logs.String(), `"msg":"inbound peer certificate rejected"`) || !strings.Contains(logs.String(), `"reason":"not_svid"`) ||
		!strings.Contains(logs.String(), "lacks serverAuth or clientAuth") {
		t.Errorf("log does not say why: %s", logs.String())
	}
	if reached.Load() != 0 {
		t.Errorf("the app saw %d connections+bytes, want 0", reached.Load())
	}
}

// The outbound refuses an endpoint whose server certificate is clientAuth
// only, or the SVID of another service, and counts and logs why.
func TestOutboundRefusesForgedServerSVIDs(t *testing.T) {
	ca := trellistest.NewCA(t, "td")
	for _, tc := range []struct {
		name, id, reason string
		eku              []x509.ExtKeyUsage
	}{
		{"clientAuth only", "spiffe://td/svc/web", "not_svid", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		{"wrong service", "spiffe://td/svc/db", "unauthorized", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := trellistest.SVIDSpec(tc.id)
			if tc.eku != nil {
				s.EKU = tc.eku
			}
			fake := trellistest.Forge(t, s, ca.Forger(t))
			var accepted atomic.Int64
			l, _ := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
				Certificates: []tls.Certificate{*fake.TLS()}, NextProtos: []string{ALPN}, ClientAuth: tls.RequireAnyClientCert,
			})
			addr := trellistest.Serve(t, l, func(c net.Conn) {
				if c.(*tls.Conn).Handshake() == nil {
					b, _ := io.Copy(io.Discard, c)
					accepted.Add(b)
				}
			})
			m := NewMetrics(prometheus.NewRegistry())
			pool := NewPool(0, 0, m)
			var logs syncBuffer
			pool.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
			t.Cleanup(pool.Close)
			_, err := pool.Get(t.Context(), Endpoint{Addr: addr}, "web", ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), ALPN))
			if err == nil {
				t.Fatal("pool connected to the fake server")
			}
			if got := testutil.ToFloat64(m.Rejections.WithLabelValues("client", tc.reason)); got != 1 {
				t.Errorf("rejections{client,%s} = %v, want 1", tc.reason, got)
			}
			if !strings.Contains(logs.String(), `"reason":"`+tc.reason+`"`) {
				t.Errorf("log does not say why: %s", logs.String())
			}
			if accepted.Load() != 0 {
				t.Errorf("the fake server received %d bytes after the handshake", accepted.Load())
			}
		})
	}
}
