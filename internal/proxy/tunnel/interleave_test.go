package tunnel

import (
	"context"
	"errors"
	"io"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"
)

// Interleavings the concurrency contract (doc.go) must survive. Each test
// races two events once; CI runs them under -race -count=200, so that the
// scheduler tries many orders. Each checks that nothing hangs, that the
// connection still serves, and that no stream is left behind.

func getFields() []hpack.HeaderField {
	return []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "web"}, {Name: ":path", Value: "/"}}
}

// errNoRoom: Reserve said no, so nothing was sent.
var errNoRoom = errors.New("no room for a stream")

// roundTrip sends a GET on cli and reads the whole response.
func roundTrip(cli *Conn) error {
	if !cli.Reserve() {
		return errNoRoom
	}
	s, err := cli.OpenRequest(getFields(), nil, true)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := s.Response(ctx); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, s)
	return err
}

// settle waits until neither side holds a stream: nothing is left behind.
func settle(t *testing.T, conns ...*Conn) {
	t.Helper()
	eventually(t, 10*time.Second, "streams released", func() bool {
		for _, c := range conns {
			if c.StreamCount() != 0 {
				return false
			}
		}
		return true
	})
}

// A caller's context ends while the response is arriving.
func TestInterleaveCancelDuringResponse(t *testing.T) {
	body := make([]byte, 200<<10)
	cli, srv := newTunnel(t, Config{Requests: true}, func(s *Stream) {
		s.WriteResponse(200, nil, body, true)
	})
	if !cli.Reserve() {
		t.Fatal("no room")
	}
	s, err := cli.OpenRequest(getFields(), nil, true)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		runtime.Gosched()
		cancel()
	}()
	if _, _, err := s.Response(ctx); err == nil {
		io.Copy(io.Discard, s) // read on, or fail with the cancel
	}
	s.Cancel(context.Canceled)
	if err := roundTrip(cli); err != nil {
		t.Fatalf("the connection after a cancel: %v", err)
	}
	settle(t, cli, srv)
}

// The peer resets a stream while its handler writes a large response.
func TestInterleaveResetDuringWrite(t *testing.T) {
	wrote := make(chan error, 1)
	cli, srv := newTunnel(t, Config{Requests: true}, func(s *Stream) {
		if s.Path == "/" {
			s.WriteResponse(200, nil, nil, true)
			return
		}
		err := s.WriteResponse(200, nil, nil, false)
		for i := 0; err == nil && i < 64; i++ {
			_, err = s.Write(make([]byte, 64<<10))
		}
		if err == nil {
			err = s.CloseWrite(nil)
		}
		wrote <- err
	})
	if !cli.Reserve() {
		t.Fatal("no room")
	}
	fields := getFields()
	fields[3].Value = "/big"
	s, err := cli.OpenRequest(fields, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		runtime.Gosched()
		s.Cancel(errors.New("caller gone"))
	}()
	io.Copy(io.Discard, s)
	<-wrote // the handler's writes end, one way or the other
	if err := roundTrip(cli); err != nil {
		t.Fatalf("the connection after a reset: %v", err)
	}
	settle(t, cli, srv)
}

// The server sends GOAWAY while the client opens a stream: the stream is
// either served or refused (and so safe to send again), never lost.
func TestInterleaveGoAwayDuringOpen(t *testing.T) {
	cli, srv := newTunnel(t, Config{Requests: true}, func(s *Stream) {
		s.WriteResponse(200, nil, []byte("ok"), true)
	})
	if err := roundTrip(cli); err != nil { // SETTINGS exchanged
		t.Fatal(err)
	}
	go func() {
		runtime.Gosched()
		srv.Shutdown()
	}()
	err := roundTrip(cli)
	if err != nil && !Refused(err) && !errors.Is(err, errNoRoom) {
		t.Fatalf("a stream opened as the server went away: %v, want served or refused", err)
	}
	select {
	case <-srv.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not close after its GOAWAY")
	}
}

// The peer closes the connection while a stream's flusher writes to a
// local end that is slow to read: the flusher, the handler and Run end.
func TestInterleavePeerCloseDuringFlush(t *testing.T) {
	ran := make(chan error, 1)
	cn, sn := tcpPair(t)
	srv := NewServer(sn, Config{}, func(s *Stream) {
		local, app := tcpPair(t)
		go func() {
			buf := make([]byte, 512) // a slow app: small reads
			for {
				if _, err := app.Read(buf); err != nil {
					return
				}
				runtime.Gosched()
			}
		}()
		s.Accept()
		s.Splice(local)
	})
	go func() { ran <- srv.Run() }()
	cli, err := NewClient(cn, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if !cli.Reserve() {
		t.Fatal("no room")
	}
	s, err := cli.Open(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	user, local := tcpPair(t)
	go s.Splice(local)
	go user.Write(make([]byte, 1<<20))
	go func() {
		runtime.Gosched()
		cli.Close()
	}()
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the peer closed during a flush")
	}
}
