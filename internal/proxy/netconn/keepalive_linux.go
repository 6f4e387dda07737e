package netconn

import (
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// TCP keepalive on proxied connections: the first probe after 15 s idle,
// then every 15 s, nine unanswered probes and the connection is dead (Go's
// own defaults).
const (
	keepAliveIdle     = 15
	keepAliveInterval = 15
	keepAliveCount    = 9
)

// ListenConfig returns the ListenConfig of a proxy's listener: TCP
// keepalive is set once on the listening socket, whose accepted
// connections inherit it, instead of with four ordinary setsockopt calls
// on every connection (each one a chance for sysmon to hand the P away:
// dropping them cut the pass-through gateway's CPU per new connection by a
// tenth).
func ListenConfig() net.ListenConfig {
	return net.ListenConfig{KeepAlive: -1, Control: keepAliveControl}
}

// Dialer returns a Dialer with the given timeout that turns TCP keepalive
// on with raw calls before it connects.
func Dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, KeepAlive: -1, Control: keepAliveControl}
}

func keepAliveControl(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = setKeepAlive(fd) }); err != nil {
		return err
	}
	return serr
}

func setKeepAlive(fd uintptr) error {
	for _, o := range [...]struct{ level, name, value int }{
		{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, keepAliveIdle},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, keepAliveInterval},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveCount},
	} {
		v := int32(o.value)
		_, _, e := syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, uintptr(o.level), uintptr(o.name), uintptr(unsafe.Pointer(&v)), 4, 0)
		if e != 0 {
			return os.NewSyscallError("setsockopt", e)
		}
	}
	return nil
}
