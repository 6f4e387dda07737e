package l7

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
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
// sent: every response to the requests raw holds, or all it sent until
// it closed the connection, whichever comes first. Nothing waits for the
// server to go quiet; a long deadline only guards against a hang.
func exchange(t *testing.T, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &got))
	var last error
	for _, method := range requestMethods(raw) {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if last = err; err != nil {
			break // closed: got holds all it sent
		}
		_, last = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if last != nil || resp.Close {
			break
		}
	}
	if ne := net.Error(nil); errors.As(last, &ne) && ne.Timeout() {
		t.Fatalf("no complete answer within 30s; got:\n%s", got.String())
	}
	return got.String()
}

// requestMethods returns the methods of the requests raw holds, in order,
// as far as they parse; one that does not parse counts as a request too
// (the server answers it, and closes).
func requestMethods(raw string) []string {
	var methods []string
	br := bufio.NewReader(strings.NewReader(raw))
	for {
		if _, err := br.Peek(1); err != nil {
			return methods
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			return append(methods, http.MethodGet)
		}
		methods = append(methods, req.Method)
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return methods
		}
	}
}

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
