package tunnel

import (
	"net"
	"sync"
)

// Cork sits under a TLS connection and gathers the records of one frame
// write into one socket write: crypto/tls writes each record of at most
// 16 KiB on its own, so a 64 KiB DATA frame would cost four system calls
// and four wake-ups of the peer.
type Cork struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

// NewCork wraps c, the connection under the TLS layer.
func NewCork(c net.Conn) *Cork { return &Cork{Conn: c} }

// Write passes p through, or holds it while corked. crypto/tls may write
// on its own (alerts, key updates) while a frame is being written; those
// records are held and sent in order too.
func (k *Cork) Write(p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.corked {
		return k.Conn.Write(p)
	}
	k.buf = append(k.buf, p...)
	return len(p), nil
}

func (k *Cork) cork() {
	k.mu.Lock()
	k.corked = true
	k.mu.Unlock()
}

// uncork sends what was held and lets writes through again.
func (k *Cork) uncork() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.corked = false
	if len(k.buf) == 0 {
		return nil
	}
	_, err := k.Conn.Write(k.buf)
	if cap(k.buf) > 1<<20 {
		k.buf = nil // do not keep a burst's buffer forever
	} else {
		k.buf = k.buf[:0]
	}
	return err
}
