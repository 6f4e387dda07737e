package h1

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

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

func TestServerHTTP1(t *testing.T) {
	addr, _ := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/panic":
			panic("handler bug")
		case "/stream":
			w.Write([]byte("part1"))
			w.(http.Flusher).Flush()
			w.Write([]byte("part2"))
			return
		case "/big":
			w.Write([]byte(strings.Repeat("x", 10000)))
			return
		}
		io.WriteString(w, r.Method+" "+r.Host+" "+r.URL.Path)
	}))
	tests := []struct {
		name, raw string
		want      []string // in order in the reply
		not       []string
	}{
		{"short HTTP/1.0 request", "GET / HTTP/1.0\r\n\r\n",
			[]string{"HTTP/1.1 200 OK\r\n", "Content-Length: 6\r\n", "Connection: close\r\n", "\r\n\r\nGET  /"}, nil},
		{"keep-alive: two requests, one connection", "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
			[]string{"Content-Length: 8\r\n", "GET h /a", "GET h /b"}, []string{"Connection: close"}},
		{"missing Host", "GET / HTTP/1.1\r\n\r\n", []string{"HTTP/1.1 400 Bad Request\r\n", "missing required Host header"}, []string{"200 OK"}},
		{"header name with a space", "GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n", []string{"HTTP/1.1 400 "}, []string{"200 OK"}},
		{"head over 60 KiB", "GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + strings.Repeat("a", 70<<10) + "\r\n\r\n",
			[]string{"HTTP/1.1 431 Request Header Fields Too Large\r\n"}, []string{"200 OK"}},
		{"HTTP/2 version in an HTTP/1 request", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", []string{"HTTP/1.1 505 "}, []string{"200 OK"}},
		{"unknown length: chunked", "GET /stream HTTP/1.1\r\nHost: h\r\n\r\n",
			[]string{"Transfer-Encoding: chunked\r\n", "5\r\npart1\r\n", "5\r\npart2\r\n", "0\r\n\r\n"}, []string{"Content-Length"}},
		{"unknown length, HTTP/1.0: ends with the connection", "GET /stream HTTP/1.0\r\n\r\n",
			[]string{"Connection: close\r\n", "part1part2"}, []string{"chunked"}},
		{"unknown length over the held size", "GET /big HTTP/1.1\r\nHost: h\r\n\r\n", []string{"Transfer-Encoding: chunked\r\n"}, nil},
		{"HEAD keeps the length, sends no body", "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", []string{"Content-Length: 8\r\n"}, []string{"HEAD h /"}},
		{"a panic ends the connection, not the server", "GET /panic HTTP/1.1\r\nHost: h\r\n\r\n", nil, []string{"HTTP/1.1"}},
		{"unsupported Expect", "PUT / HTTP/1.1\r\nHost: h\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx", []string{"HTTP/1.1 417 "}, []string{"200 OK"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := exchange(t, addr, tt.raw)
			rest := got
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("reply lacks %q (in order) in:\n%s", w, got)
				}
				rest = rest[i+len(w):]
			}
			for _, n := range tt.not {
				if strings.Contains(got, n) {
					t.Fatalf("reply has %q:\n%s", n, got)
				}
			}
		})
	}
	// The server still serves after the panic.
	if got := exchange(t, addr, "GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"); !strings.Contains(got, "GET h /after") {
		t.Fatalf("after a panic: %q", got)
	}
}

// A body the handler did not read is dropped when small, so the
// connection carries the next request; the reply to the second request
// proves the first body was not taken for a request.
func TestServerDrainsUnreadBody(t *testing.T) {
	addr, _ := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path)
	}))
	got := exchange(t, addr, "POST /one HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nGET /x HTTP\r\nGET /two HTTP/1.1\r\nHost: h\r\n\r\n")
	if strings.Count(got, "HTTP/1.1 200 OK") != 2 || !strings.Contains(got, "/two") || strings.Contains(got, "/x") {
		t.Fatalf("got:\n%s", got)
	}
}

func TestServerShutdown(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	addr, s := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		io.WriteString(w, "done")
	}))
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	if _, err := http.ReadResponse(bufio.NewReader(idle), nil); err != nil {
		t.Fatal(err)
	}
	busy, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
	<-started

	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	// The idle connection is closed at once...
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); err == nil {
		t.Fatalf("idle connection still open (read %d bytes)", n)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	// ...the busy one finishes its request, then closes.
	close(release)
	busy.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(busy)
	if !strings.Contains(string(b), "done") || !strings.Contains(string(b), "Connection: close") {
		t.Fatalf("in-flight request got %q", b)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("listener still accepts after Shutdown")
	}
}

// A client sending junk as fast as it can must not flood the log: the
// reader's refusals are all counted, and logged within a budget.
func TestRefusalLinesAreBounded(t *testing.T) {
	var buf bytes.Buffer
	s := NewServer(http.NotFoundHandler(), slog.New(slog.NewTextHandler(&buf, nil)))
	s.Rejected = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"reason"})
	for range 1000 {
		s.count("192.0.2.1:1234", refused(http.StatusBadRequest, "framing", "junk"))
	}
	if n := testutil.ToFloat64(s.Rejected.WithLabelValues("framing")); n != 1000 {
		t.Errorf("counted %v refusals, want 1000", n)
	}
	if lines := strings.Count(buf.String(), "HTTP/1.1 request refused"); lines > refusalsPerSecond*2 || lines == 0 {
		t.Errorf("%d lines logged for 1000 refusals, want at most about %d a second", lines, refusalsPerSecond)
	}
}

// A first line that is neither HTTP/1.x nor the HTTP/2 preface (h2spec's
// invalid preface) gets no HTTP/1.1 answer, which the peer could not read,
// only the close; it is counted. A broken HTTP/1 version still gets 400.
func TestNeitherHTTP1NorPrefaceIsClosed(t *testing.T) {
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rejected"}, []string{"reason"})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(http.NotFoundHandler(), slog.New(slog.DiscardHandler))
	s.Rejected = rejected
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	for first, want := range map[string]string{
		"INVALID CONNECTION PREFACE": "",
		"PRI * HTTP/2.1":             "HTTP/1.1 505 ",
		"GET / HTTP/x":               "HTTP/1.1 400 ",
	} {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, first+"\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c) // to the server's close
		c.Close()
		if err != nil || !strings.HasPrefix(string(got), want) || want == "" && len(got) > 0 {
			t.Errorf("%q: got %q, %v; want %q and the close", first, got, err, want)
		}
	}
	if n := testutil.ToFloat64(rejected.WithLabelValues(ReasonNotHTTP)); n != 1 {
		t.Errorf("counted %v as not HTTP, want 1", n)
	}
}
