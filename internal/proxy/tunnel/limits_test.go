package tunnel

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// post is a request block that leaves the stream open for a body.
func (p *rawPeer) post(t *testing.T, id uint32) {
	t.Helper()
	p.block(t, id, false, append(request(), hpack.HeaderField{Name: ":method", Value: "POST"})[1:]...)
}

// awaitCredit reads frames until the server gives stream id more window,
// and returns how much.
func awaitCredit(t *testing.T, p *rawPeer, id uint32) int64 {
	t.Helper()
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if wu, ok := f.(*http2.WindowUpdateFrame); ok && wu.StreamID == id {
			return int64(wu.Increment)
		}
	}
}

// A stream's receive window starts small and grows only while its reader
// keeps up: a handler that never reads holds the initial window (64 KiB),
// not the megabyte a bulk stream earns.
func TestStreamWindowGrowsWithItsReader(t *testing.T) {
	for _, tc := range []struct {
		name   string
		read   bool
		window int64 // the stream's window at the end
		send   int
	}{
		{"reader that never reads", false, 64 << 10, 0},
		{"reader that keeps up", true, 1 << 20, 4 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cn, sn := tcpPair(t)
			p := &rawPeer{streams: make(chan *Stream, 4)}
			srv := NewServer(sn, Config{Requests: true}, func(s *Stream) {
				p.streams <- s
				if tc.read {
					io.Copy(io.Discard, s)
				} else {
					<-s.c.Done()
				}
			})
			go srv.Run()
			t.Cleanup(func() { srv.Close() })
			io.WriteString(cn, http2.ClientPreface)
			p.fr = http2.NewFramer(cn, cn)
			p.enc = hpack.NewEncoder(&p.hbuf)
			p.fr.WriteSettings()
			p.post(t, 1)
			s := <-p.streams
			chunk := make([]byte, 16<<10)
			if !tc.read {
				// The first window, then one byte more: with no credit
				// given, the byte overruns it.
				for range 4 {
					p.fr.WriteData(1, false, chunk)
				}
				p.fr.WriteData(1, false, []byte("x"))
				if got := p.answer(t, 1); got != "reset FLOW_CONTROL_ERROR" {
					t.Fatalf("a byte past the first window: %q, want reset FLOW_CONTROL_ERROR", got)
				}
			}
			// Send what the windows allow, following the credit.
			for window, sent := int64(64<<10), 0; tc.read && sent < tc.send; {
				for window < int64(len(chunk)) {
					window += awaitCredit(t, p, 1)
				}
				if err := p.fr.WriteData(1, false, chunk); err != nil {
					t.Fatal(err)
				}
				window -= int64(len(chunk))
				sent += len(chunk)
			}
			s.mu.Lock()
			got := s.window
			s.mu.Unlock()
			if got != tc.window {
				t.Fatalf("the stream's window is %d KiB, want %d KiB", got>>10, tc.window>>10)
			}
		})
	}
}

// A request stream on which nothing moves for StreamIdleTimeout is reset,
// and its handler's reads end.
func TestIdleStreamIsReset(t *testing.T) {
	ended := make(chan error, 1)
	p := newRawPeerWith(t, Config{Requests: true, PingAfter: 20 * time.Millisecond, StreamIdleTimeout: 100 * time.Millisecond}, func(s *Stream) {
		_, err := io.Copy(io.Discard, s)
		ended <- err
	})
	p.post(t, 1)
	if got := p.answer(t, 1); got != "reset CANCEL" {
		t.Fatalf("idle stream: %q, want reset CANCEL", got)
	}
	if err := <-ended; !errors.Is(err, errStreamIdle) {
		t.Fatalf("handler's read ended with %v, want the idle timeout", err)
	}
}

// A peer that stops reading what we write is cut off after WriteTimeout:
// a writer blocked on it returns an error instead of waiting for ever.
func TestPeerThatDoesNotReadIsCutOff(t *testing.T) {
	cn, sn := tcpPair(t)
	cn.(*net.TCPConn).SetReadBuffer(4 << 10)
	sn.(*net.TCPConn).SetWriteBuffer(4 << 10)
	wrote := make(chan error, 1)
	srv := NewServer(sn, Config{Requests: true, WriteTimeout: 200 * time.Millisecond}, func(s *Stream) {
		if err := s.WriteResponse(200, nil, nil, false); err != nil {
			wrote <- err
			return
		}
		big := make([]byte, 1<<20)
		for {
			if _, err := s.Write(big); err != nil {
				wrote <- err
				return
			}
		}
	})
	go srv.Run()
	t.Cleanup(func() { srv.Close() })
	fr := http2.NewFramer(cn, cn)
	io.WriteString(cn, http2.ClientPreface)
	// Windows as large as can be, so that only the socket holds back.
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: maxWindow})
	fr.WriteWindowUpdate(0, maxWindow-initialWindow)
	p := &rawPeer{fr: fr, enc: hpack.NewEncoder(nil)}
	p.enc = hpack.NewEncoder(&p.hbuf)
	p.block(t, 1, true, request()...)
	// ... and never read again.
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("write succeeded")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the writer still waits on a peer that does not read")
	}
	<-srv.Done()
}
