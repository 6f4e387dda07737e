package l7

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"

	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// The helpers of package h1's server tests, for the tests here of what
// l7 serves with it (NewServer: h1's server with l7's hooks).

// startServer serves h with a Server on loopback and returns its address.
func startServer(t *testing.T, h http.Handler) (string, *Server) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(h, slog.New(slog.DiscardHandler))
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return l.Addr().String(), s
}

// exchange writes raw to a new connection and returns what the server
// sent (trellistest.Exchange).
func exchange(t *testing.T, addr, raw string) string { return trellistest.Exchange(t, addr, raw) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// h2c with prior knowledge reaches the same handler.
func TestServerH2C(t *testing.T) {
	addr, _ := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	}))
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, a string, _ *tls.Config) (net.Conn, error) {
		return net.Dial(network, a)
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b, _ := io.ReadAll(resp.Body); string(b) != "HTTP/2.0" {
		t.Fatalf("handler saw %q, want HTTP/2.0", b)
	}
}
