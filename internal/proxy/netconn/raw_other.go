//go:build !linux

package netconn

import "net"

// Raw returns c: raw socket calls are made on Linux only.
func Raw(c net.Conn) net.Conn { return c }

// CloseWrite half-closes c.
func CloseWrite(c *net.TCPConn) error { return c.CloseWrite() }
