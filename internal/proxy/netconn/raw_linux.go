package netconn

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Raw returns c reading and writing its socket with raw system calls, which
// the Go scheduler does not see. A non-blocking read or write on a socket
// returns in microseconds, but as an ordinary system call it lets sysmon
// take the goroutine's P away when it sees it in a call twice in a row
// (20 us apart): under load that kept sysmon waking every 20 us and handed
// Ps between threads on every few requests, a fifth of an L7 sidecar's
// CPU. Waiting still goes through the netpoller. Anything but a
// *net.TCPConn is returned as it is.
//
// The race detector takes ordinary socket calls as synchronizing (a write
// happens before the read that sees it); it does not know these, so code
// must order its memory with Go's own means, not a socket round trip.
func Raw(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawConn{TCPConn: tc, rc: rc}
	r.readFn, r.writeFn, r.awaitFn = r.read, r.write, r.await
	return r
}

type rawConn struct {
	*net.TCPConn
	rc syscall.RawConn

	// The call in progress of each direction: the functions are made once,
	// since a closure per call would allocate.
	rmu     sync.Mutex
	rbuf    []byte
	rn      int
	rerr    syscall.Errno
	readFn  func(uintptr) bool
	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werr    syscall.Errno
	writeFn func(uintptr) bool
	// WriteAwait's, under both locks: its function, and whether it wrote.
	awaitFn func(uintptr) bool
	wrote   bool
}

// RawRead reads from the non-blocking socket fd into p, which is not
// empty, with a raw system call (see Raw).
func RawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

// RawWrite writes p, which is not empty, to the non-blocking socket fd
// with a raw system call (see Raw).
func RawWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

func (c *rawConn) read(fd uintptr) bool {
	c.rn, c.rerr = RawRead(fd, c.rbuf)
	return c.rerr != syscall.EAGAIN
}

func (c *rawConn) write(fd uintptr) bool {
	c.wn, c.werr = RawWrite(fd, c.wbuf)
	return c.werr != syscall.EAGAIN
}

// await is WriteAwait's function for the read wait: the first call
// writes, the next (the socket is readable) ends the wait.
func (c *rawConn) await(fd uintptr) bool {
	if c.wrote {
		return true
	}
	c.wrote = true
	c.wn, c.werr = RawWrite(fd, c.wbuf)
	if c.werr != 0 {
		c.wn = 0
	}
	return c.werr != 0 || c.wn < len(c.wbuf)
}

// WriteAwait writes p, as Write does, and then waits until the socket
// has something to read, or its read deadline passes: for a request
// whose answer is read next. A read right after a write almost always
// finds nothing yet, and costs a system call before the wait; the wait
// here is the netpoller's, entered with the write (the readiness the
// answer brings cannot come before it, so none is missed). The wait's
// failure is the next Read's to report. What the socket does not take
// at once is written as Write writes it, and the wait is then the next
// Read's.
func (c *rawConn) WriteAwait(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	c.wmu.Lock()
	c.wbuf, c.wrote = p, false
	c.rc.Read(c.awaitFn)
	n, errno, wrote := c.wn, c.werr, c.wrote
	c.wbuf = nil
	c.wmu.Unlock()
	c.rmu.Unlock()
	switch {
	case !wrote:
		return c.Write(p) // the read side is closed or timed out already
	case errno != 0 && errno != syscall.EAGAIN && errno != syscall.EINTR:
		return 0, c.opError("write", errno)
	case n < len(p):
		m, err := c.Write(p[n:])
		return n + m, err
	}
	return n, nil
}

func (c *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		c.rbuf = p
		err := c.rc.Read(c.readFn)
		c.rbuf = nil
		switch {
		case err != nil:
			return 0, c.opError("read", err)
		case c.rerr == syscall.EINTR:
			continue
		case c.rerr != 0:
			return 0, c.opError("read", c.rerr)
		case c.rn == 0:
			return 0, io.EOF
		}
		return c.rn, nil
	}
}

func (c *rawConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	sent := 0
	for sent < len(p) {
		c.wbuf = p[sent:]
		err := c.rc.Write(c.writeFn)
		c.wbuf = nil
		switch {
		case err != nil:
			return sent, c.opError("write", err)
		case c.werr == syscall.EINTR:
			continue
		case c.werr != 0:
			return sent, c.opError("write", c.werr)
		}
		sent += c.wn
	}
	return sent, nil
}

func (c *rawConn) opError(op string, err error) error {
	if e, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, e)
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// CloseWrite half-closes c with a raw shutdown(2) (see Raw).
func CloseWrite(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return c.CloseWrite()
	}
	var e syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, e = syscall.RawSyscall(syscall.SYS_SHUTDOWN, fd, syscall.SHUT_WR, 0)
	}); err != nil {
		return &net.OpError{Op: "shutdown", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	if e != 0 {
		return &net.OpError{Op: "shutdown", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("shutdown", e)}
	}
	return nil
}

func (c *rawConn) CloseWrite() error { return CloseWrite(c.TCPConn) }
