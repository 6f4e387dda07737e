package h1

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// The HTTP/2 side of Server, through its ServeStream hook alone: what h1
// does (TLS server name against the authority, the refusal counted, a
// handler's panic aborting its stream) without l7's request-stream glue,
// which l7's own tests cover.

// recordingStreams is a minimal ServeStream: a request of the stream's
// method, authority and path, without a body, and the recorded response
// sent whole, or the stream reset if the handler aborted it.
func recordingStreams(s *tunnel.Stream, serve func(http.ResponseWriter, *http.Request)) {
	r := httptest.NewRequest(s.Method, s.Path, http.NoBody)
	r.Host, r.Proto, r.ProtoMajor, r.ProtoMinor = s.Authority, "HTTP/2.0", 2, 0
	w := &abortRecorder{ResponseRecorder: httptest.NewRecorder()}
	serve(w, r)
	if w.aborted {
		s.Cancel(errors.New("aborted by the handler"))
		return
	}
	s.WriteResponse(w.Code, nil, w.Body.Bytes(), true)
}

type abortRecorder struct {
	*httptest.ResponseRecorder
	aborted bool
}

func (w *abortRecorder) Abort() { w.aborted = true }

// startH2 serves h over TLS with ALPN h2 for the names ingress.test and
// other.test, and returns the address and a transport that asks for
// ingress.test.
func startH2(t *testing.T, s *Server) (string, *http2.Transport) {
	t.Helper()
	cert := trellistest.Forge(t, trellistest.ForgeSpec{DNSNames: []string{"ingress.test", "other.test"},
		KeyUsage: x509.KeyUsageDigitalSignature, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, nil)
	roots := x509.NewCertPool()
	roots.AddCert(cert.Cert)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		s.Serve(tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{*cert.TLS()}, NextProtos: []string{"h2"}}))
	}()
	t.Cleanup(func() {
		s.Close()
		<-served
	})
	tr := &http2.Transport{TLSClientConfig: &tls.Config{ServerName: "ingress.test", RootCAs: roots}}
	t.Cleanup(tr.CloseIdleConnections)
	return l.Addr().String(), tr
}

// A request for an authority the TLS server name did not name gets 421
// from the server itself, is counted as misdirected and reaches no
// handler; one for the name it did reaches the handler.
func TestH2ServerNameAgainstAuthority(t *testing.T) {
	var reached atomic.Int32
	s := NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		io.WriteString(w, "app")
	}), slog.New(slog.DiscardHandler))
	s.ServeStream = recordingStreams
	s.Rejected = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rejected"}, []string{"reason"})
	addr, tr := startH2(t, s)
	for _, tc := range []struct {
		host    string
		status  int
		reached int32
	}{
		{"ingress.test", 200, 1},
		{"INGRESS.test:443", 200, 2},
		{"other.test", 421, 2},
	} {
		req, _ := http.NewRequest("GET", "https://"+addr+"/", nil)
		req.Host = tc.host
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status || reached.Load() != tc.reached {
			t.Errorf("Host %s: status %d, %d handled; want %d, %d", tc.host, resp.StatusCode, reached.Load(), tc.status, tc.reached)
		}
	}
	if n := testutil.ToFloat64(s.Rejected.WithLabelValues("misdirected")); n != 1 {
		t.Errorf("counted %v misdirected requests, want 1", n)
	}
}

// A handler's panic aborts its stream (the client sees it fail, not a
// response cut short) and leaves the connection serving.
func TestH2PanicAbortsTheStream(t *testing.T) {
	s := NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic("handler bug")
		}
		io.WriteString(w, "ok")
	}), slog.New(slog.DiscardHandler))
	s.ServeStream = recordingStreams
	addr, tr := startH2(t, s)
	req, _ := http.NewRequest("GET", "https://"+addr+"/panic", nil)
	req.Host = "ingress.test"
	if resp, err := tr.RoundTrip(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a panicking handler's request got %d, want the stream reset", resp.StatusCode)
	}
	req, _ = http.NewRequest("GET", "https://"+addr+"/", nil)
	req.Host = "ingress.test"
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("after a panic: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("after a panic: %q, want ok", b)
	}
}

// Without ServeStream, an HTTP/2 client's connection is closed unserved
// (h2c with prior knowledge here), and the server still serves HTTP/1.1.
func TestH2WithoutServeStreamIsClosed(t *testing.T) {
	addr, _ := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "h1")
	}))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	got, err := io.ReadAll(c) // to the server's close
	if err != nil || len(got) > 0 {
		t.Fatalf("h2c without ServeStream: got %q, %v; want the close", got, err)
	}
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, a string, _ *tls.Config) (net.Conn, error) {
		return net.Dial(network, a)
	}}
	defer tr.CloseIdleConnections()
	if _, err := (&http.Client{Transport: tr}).Get("http://" + addr + "/"); err == nil {
		t.Fatal("an h2c request was answered without ServeStream")
	}
	if got := exchange(t, addr, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"); len(got) < 2 || got[len(got)-2:] != "h1" {
		t.Fatalf("HTTP/1.1 after: %q", got)
	}
}
