package l4

import (
	"net"
	"sync"
	"syscall"

	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
)

// smallBufSize is copyTCP's buffer: a request, a response, a handshake flight; a full TLS record (16 KiB) fills it.
const smallBufSize = 8 << 10

var smallBufPool = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}

// copyTCP copies between two TCP sockets: through a small buffer while the
// messages are small (one read and one write each, cheaper than two
// splices through a pipe), and by splice once a read fills the buffer,
// which says the stream is bulk.
//
// The buffer is taken only once the socket is readable and given back
// after the write, so an idle connection holds none: with net.Conn.Read,
// every connection would hold one per direction while it waits.
func copyTCP(d, s *net.TCPConn) (int64, error) {
	rc, err := s.SyscallConn()
	if err != nil {
		return d.ReadFrom(s)
	}
	dw := netconn.Raw(d)
	var total int64
	for {
		var bp *[]byte
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			bp = smallBufPool.Get().(*[]byte)
			var e syscall.Errno
			for {
				n, e = netconn.RawRead(fd, *bp)
				if e != syscall.EINTR {
					break
				}
			}
			rerr = nil
			if e != 0 {
				rerr = e
			}
			if e == syscall.EAGAIN {
				// Nothing yet: give the buffer back and wait for the poller.
				smallBufPool.Put(bp)
				bp = nil
				return false
			}
			return true
		})
		if err == nil {
			err = rerr
		}
		if err != nil || n <= 0 {
			if bp != nil {
				smallBufPool.Put(bp)
			}
			return total, err // n == 0 with no error is EOF
		}
		w, werr := dw.Write((*bp)[:n])
		smallBufPool.Put(bp)
		total += int64(w)
		if werr != nil {
			return total, werr
		}
		if n == smallBufSize {
			m, err := d.ReadFrom(s)
			return total + m, err
		}
	}
}
