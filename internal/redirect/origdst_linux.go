package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST at SOL_IP, and IP6T_SO_ORIGINAL_DST at
// SOL_IPV6: conntrack's record of the destination before NAT.
const soOriginalDst = 80

// OriginalDst is where c was headed before a REDIRECT rule sent it to this
// process. A connection that was not redirected reports the address it
// reached, which is the listener's own.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T is not a socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	local, _ := c.LocalAddr().(*net.TCPAddr)
	if local == nil {
		return netip.AddrPort{}, errors.New("original destination: not a TCP connection")
	}
	var dst netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		if local.IP.To4() != nil {
			// The kernel writes a sockaddr_in into the 16 bytes of an
			// ip_mreq-sized buffer: family, port (big-endian), address.
			var m *unix.IPv6Mreq
			if m, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst); serr == nil {
				b := m.Multiaddr
				dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
			}
			return
		}
		var i *unix.IPv6MTUInfo
		if i, serr = unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, soOriginalDst); serr == nil {
			// sin6_port is in network order in memory.
			port := binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, i.Addr.Port))
			dst = netip.AddrPortFrom(netip.AddrFrom16(i.Addr.Addr), port)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return dst, nil
}
