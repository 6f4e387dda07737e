package netconn

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

var isLinux = runtime.GOOS == "linux"

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return acceptPair(t, l, net.Dial)
}

// acceptPair connects to l with dial and returns both ends; it closes l.
func acceptPair(t *testing.T, l net.Listener, dial func(network, addr string) (net.Conn, error)) (client, server net.Conn) {
	t.Helper()
	defer l.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		acc <- c
	}()
	client, err := dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestRawCarriesBytesBothWays(t *testing.T) {
	c, s := tcpPair(t)
	rc, rs := Raw(c), Raw(s)
	if isLinux && rc == c {
		t.Fatalf("Raw(%T) returned it unwrapped", c)
	}
	// More than the socket buffers hold, so that writes wait for the
	// reader through the poller.
	want := make([]byte, 8<<20)
	rand.Read(want)
	errc := make(chan error, 1)
	go func() {
		_, err := rc.Write(want)
		if err == nil {
			err = rc.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(rs)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want the %d written", len(got), len(want))
	}
	if n, err := rs.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read after the end = %d, %v; want 0, EOF", n, err)
	}
}

func TestRawHonoursDeadlinesAndClose(t *testing.T) {
	c, _ := tcpPair(t)
	rc := Raw(c)
	rc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := rc.Read(make([]byte, 10))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	rc.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := rc.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	rc.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed conn: %v, want net.ErrClosed", err)
	}
	if _, err := rc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write on a closed conn: %v, want net.ErrClosed", err)
	}
}

func TestRawLeavesOtherConnsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := Raw(a); got != a {
		t.Fatalf("Raw(pipe) = %T, want the pipe itself", got)
	}
}

func TestRawListenerWrapsWhatItAccepts(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := RawListener(l)
	defer rl.Close()
	go func() {
		c, err := net.Dial("tcp", l.Addr().String())
		if err == nil {
			c.Write([]byte("ping"))
			c.Close()
		}
	}()
	c, err := rl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, plain := c.(*net.TCPConn); plain && isLinux {
		t.Fatal("Accept returned an unwrapped *net.TCPConn")
	}
	if got, err := io.ReadAll(c); err != nil || string(got) != "ping" {
		t.Fatalf("read %q, %v; want ping", got, err)
	}
	rl.Close()
	if _, err := rl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
}

// WriteAwait writes a request and returns once the answer is there to
// read, not before (a request the socket takes at once); a larger one is
// written whole; a wait cut short by the read deadline is the next
// Read's error.
func TestWriteAwait(t *testing.T) {
	if !isLinux {
		t.Skip("raw socket calls are Linux's")
	}
	for _, size := range []int{10, 8 << 20} { // one write; more than the socket takes at once
		c, s := tcpPair(t)
		a, ok := Raw(c).(Awaiter)
		if !ok {
			t.Fatalf("Raw(%T) is no Awaiter", c)
		}
		req := make([]byte, size)
		rand.Read(req)
		got, release := make(chan []byte, 1), make(chan struct{})
		go func() {
			b := make([]byte, size)
			io.ReadFull(s, b)
			got <- b
			<-release
			s.Write([]byte("answer"))
		}()
		done := make(chan error, 1)
		go func() {
			n, err := a.WriteAwait(req)
			if err == nil && n != size {
				err = errors.New("short write")
			}
			done <- err
		}()
		if b := <-got; !bytes.Equal(b, req) {
			t.Fatalf("size %d: the peer got other bytes", size)
		}
		if size == 10 { // (a larger one leaves the wait to the next Read)
			select {
			case err := <-done:
				t.Fatalf("size %d: WriteAwait returned (%v) before the answer was sent", size, err)
			default:
			}
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatalf("size %d: WriteAwait: %v", size, err)
		}
		b := make([]byte, 16)
		if n, err := a.Read(b); err != nil || string(b[:n]) != "answer" {
			t.Fatalf("size %d: read %q, %v after the wait", size, b[:n], err)
		}
	}

	c, s := tcpPair(t)
	a := Raw(c).(Awaiter)
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if n, err := a.WriteAwait([]byte("ping")); n != 4 || err != nil {
		t.Fatalf("WriteAwait with no answer coming = %d, %v; want the write done, the wait's end left to Read", n, err)
	}
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read after a wait that timed out: %v, want the deadline", err)
	}
	if b := make([]byte, 4); func() bool { io.ReadFull(s, b); return string(b) != "ping" }() {
		t.Fatalf("the peer got %q", b)
	}
}
