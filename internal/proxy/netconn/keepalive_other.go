//go:build !linux

package netconn

import (
	"net"
	"time"
)

// ListenConfig returns the ListenConfig of a proxy's listener: Go's
// default TCP keepalive.
func ListenConfig() net.ListenConfig { return net.ListenConfig{} }

// Dialer returns a Dialer with the given timeout and Go's default TCP
// keepalive.
func Dialer(timeout time.Duration) *net.Dialer { return &net.Dialer{Timeout: timeout} }
