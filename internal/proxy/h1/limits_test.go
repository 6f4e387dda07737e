package h1

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
)

// limitsServer serves a handler that answers at once, with the limits
// set by configure.
func limitsServer(t *testing.T, configure func(*Server)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}), slog.New(slog.DiscardHandler))
	s.ServeStream = func(st *tunnel.Stream, serve func(http.ResponseWriter, *http.Request)) {
		stopped := make(chan struct{})
		st.OnStop(func() { close(stopped) })
		<-stopped // held open until the connection ends
	}
	configure(s)
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return l.Addr().String()
}

// closedWithin reads from c until the server closes it, and fails the
// test if that takes longer than within.
func closedWithin(t *testing.T, c net.Conn, within time.Duration) []byte {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(within + 5*time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("connection not closed by the server: %v", err)
	}
	if took := time.Since(start); took > within+2*time.Second {
		t.Fatalf("closed after %s, want about %s", took, within)
	}
	return b
}

// The limits of client connections are settings: a head that does not
// come within HeaderReadTimeout, and a kept connection idle for
// IdleTimeout, are closed.
func TestConnectionTimeoutsAreSettings(t *testing.T) {
	addr := limitsServer(t, func(s *Server) {
		s.HeaderReadTimeout = 200 * time.Millisecond
		s.IdleTimeout = 300 * time.Millisecond
	})
	t.Run("header read timeout", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n") // and no end of head
		if b := closedWithin(t, c, 200*time.Millisecond); len(b) != 0 {
			t.Fatalf("a head that never ended got %q", b)
		}
	})
	t.Run("idle timeout", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		if b := closedWithin(t, c, 300*time.Millisecond); !bytes.HasSuffix(b, []byte("\r\n\r\nok")) {
			t.Fatalf("got %q before the close, want the answer", b)
		}
	})
}

// A kept connection's next head that comes in pieces is bounded by
// HeaderReadTimeout, not by IdleTimeout: the header deadline is left out
// only for a head that came whole.
// Empty lines before the request line (which the server skips) hold no
// head either, nor do they make a partial head whole.
func TestHeaderTimeoutOnAKeptConnection(t *testing.T) {
	for _, tc := range []struct{ name, next string }{
		{"partial head", "GET / HTTP/1.1\r\nHost: a\r\n"},
		{"empty lines then partial head", "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n"},
		{"empty lines only", "\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := limitsServer(t, func(s *Server) {
				s.HeaderReadTimeout = 200 * time.Millisecond
				s.IdleTimeout = 10 * time.Second
			})
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			io.WriteString(c, tc.next) // and no end of head
			start := time.Now()
			if _, err := br.ReadByte(); err == nil {
				t.Fatal("an answer to a head that never ended")
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("closed after %s: the idle timeout, not the header one", took)
			}
		})
	}
}

// An HTTP/2 client connection takes H2.MaxStreams streams at once; the
// next is refused.
func TestH2MaxStreamsIsASetting(t *testing.T) {
	addr := limitsServer(t, func(s *Server) { s.H2.MaxStreams = 2 })
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "a"}, {Name: ":path", Value: "/"}} {
		enc.WriteField(f)
	}
	for id := uint32(1); id <= 5; id += 2 {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok {
			if rst.StreamID != 5 || rst.ErrCode != http2.ErrCodeRefusedStream {
				t.Fatalf("RST_STREAM %d %v, want stream 5 refused", rst.StreamID, rst.ErrCode)
			}
			return
		}
	}
}

// A client that stops reading its response is disconnected after
// WriteTimeout: the handler's writes fail instead of waiting for ever.
func TestClientThatStopsReadingIsCutOff(t *testing.T) {
	wrote := make(chan error, 1)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				wrote <- err
				return
			}
		}
	}), slog.New(slog.DiscardHandler))
	s.WriteTimeout = 200 * time.Millisecond
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4 << 10)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n") // and never read
	select {
	case err := <-wrote:
		t.Logf("the handler's write ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the handler still writes to a client that does not read")
	}
}
