package l4

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
)

// copyTCP's buffers: a request, a response or a handshake flight fits the
// small one, and a full TLS record (16 KiB) fills it at once, which says
// the stream is bulk; bulk then moves through the large one.
const (
	smallBufSize = 8 << 10
	largeBufSize = 64 << 10
)

var (
	smallBufPool = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
	largeBufPool = sync.Pool{New: func() any { b := make([]byte, largeBufSize); return &b }}
)

// copyTCP copies between two TCP sockets with raw reads and writes (see
// netconn.Raw) through a pooled buffer: the small one while the messages
// are small, the large one once a read fills the small one.
//
// The buffer is taken only once the socket is readable and given back
// after the write, so an idle connection holds none: with net.Conn.Read,
// every connection would hold one per direction while it waits.
//
// It does not splice. Once reads and writes stopped going through the
// scheduler, a copy through user space moved bulk streams 1.02-1.11x as
// fast as HAProxy's at 0.87x its CPU per GB, where splice through a pipe
// (a read into the pipe, then a write out of it, each waiting its turn)
// moved them at 0.90-0.99x (bench/NOTES.md, session 9).
func copyTCP(d, s *net.TCPConn, progress *atomic.Int64) (int64, error) {
	rc, err := s.SyscallConn()
	if err != nil {
		return d.ReadFrom(s)
	}
	dw := netconn.Raw(d)
	pool := &smallBufPool
	var total int64
	for {
		var bp *[]byte
		var n int
		var e syscall.Errno
		err := rc.Read(func(fd uintptr) bool {
			bp = pool.Get().(*[]byte)
			for {
				n, e = netconn.RawRead(fd, *bp)
				if e != syscall.EINTR {
					break
				}
			}
			if e == syscall.EAGAIN {
				// Nothing yet: give the buffer back and wait for the poller.
				pool.Put(bp)
				bp = nil
				return false
			}
			return true
		})
		if err == nil && e != 0 {
			err = e
		}
		if err != nil || n <= 0 {
			if bp != nil {
				pool.Put(bp)
			}
			return total, err // n == 0 with no error is EOF
		}
		w, werr := dw.Write((*bp)[:n])
		full := n == len(*bp)
		pool.Put(bp)
		total += int64(w)
		if progress != nil {
			progress.Add(int64(w))
		}
		if werr != nil {
			return total, werr
		}
		if full {
			pool = &largeBufPool
		}
	}
}
