package passthrough

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// Bytes a client sends after its ClientHello without waiting, read with
// it in one go, are returned with it, to be forwarded in order.
func TestReadHelloKeepsWhatFollows(t *testing.T) {
	hello := helloWithName(t, "web.example")
	data := append(append([]byte{}, hello...), "early bytes"...)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client := make(chan struct{})
	defer func() { <-client }()
	go func() {
		defer close(client)
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			return
		}
		defer c.Close()
		c.Write(data)
		io.Copy(io.Discard, c)
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// All of it has arrived: one read can take it all.
	trellistest.Eventually(t, 5*time.Second, "the client's bytes queued", func() error {
		if n := queued(t, c.(*net.TCPConn)); n != len(data) {
			return fmt.Errorf("%d of %d bytes", n, len(data))
		}
		return nil
	})
	got, sni, err := readHello(c, time.Second)
	if err != nil || sni != "web.example" {
		t.Fatalf("readHello: %q, %v", sni, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes, want the hello and what followed (%d)", len(got), len(data))
	}
}

// queued is the number of bytes received on c and not yet read.
func queued(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return n
}
