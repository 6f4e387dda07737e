//go:build !linux

package redirect

import (
	"errors"
	"net"
	"net/netip"
)

// OriginalDst needs Linux's conntrack.
func OriginalDst(net.Conn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("original destination: transparent proxying needs Linux")
}
