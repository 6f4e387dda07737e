//go:build !linux

package l4

import (
	"net"
	"sync/atomic"
)

// copyTCP copies with the platform's best means (sendfile or splice where
// it has them); progress, if not nil, gets the count at the end.
func copyTCP(d, s *net.TCPConn, progress *atomic.Int64) (int64, error) {
	n, err := d.ReadFrom(s)
	if progress != nil {
		progress.Add(n)
	}
	return n, err
}
