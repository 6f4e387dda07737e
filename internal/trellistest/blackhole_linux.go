package trellistest

import (
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// BlackHole returns a loopback address where a TCP connect hangs, as it
// does to a host that drops packets: a listener with the smallest backlog
// that never accepts, whose queue is already full, so that the kernel
// drops further SYNs. Everything is closed when the test ends.
func BlackHole(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "black hole")
	t.Cleanup(func() { f.Close() })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}).String()
	// Fill the queue until a connect times out: from then on, every SYN
	// is dropped.
	for range 16 {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			t.Cleanup(func() { c.Close() })
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return addr
		}
		t.Fatalf("fill the black hole's queue: %v", err)
	}
	t.Fatal("the black hole's queue does not fill")
	return ""
}
