package netconn

import (
	"context"
	"net"
	"syscall"
	"testing"
)

// Both ends get TCP keepalive: the dialed socket from the Dialer's control
// function, the accepted one by inheriting the listening socket's.
func TestKeepAliveOnAcceptedAndDialedConns(t *testing.T) {
	lc := ListenConfig()
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d, a := acceptPair(t, l, Dialer(0).Dial)
	for name, c := range map[string]net.Conn{"accepted": a, "dialed": d} {
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		rc.Control(func(fd uintptr) {
			for _, o := range []struct {
				what        string
				level, name int
				want        int
			}{
				{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
				{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, keepAliveIdle},
				{"TCP_KEEPINTVL", syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, keepAliveInterval},
				{"TCP_KEEPCNT", syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveCount},
			} {
				got, err := syscall.GetsockoptInt(int(fd), o.level, o.name)
				if err != nil || got != o.want {
					t.Errorf("%s conn: %s = %d, %v; want %d", name, o.what, got, err, o.want)
				}
			}
		})
	}
}
