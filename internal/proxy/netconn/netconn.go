// Package netconn holds the connection plumbing every proxy shares: the
// accept loop of a listener (Acceptor: retries with backoff when the
// process runs out of descriptors, per-listener and process-wide
// connection limits, an overload signal from descriptors in use), a
// connection whose first bytes a sniffer has already read, and sockets
// that read and write with raw system calls (Raw, RawListener).
package netconn

import (
	"bufio"
	"net"
)

// AcceptLoop serves l with a default Acceptor (no name, the default limit,
// nothing logged or counted), running accept on a goroutine of its own per
// connection.
//
// Deprecated: use an Acceptor, which a role configures with the
// listener's name, limits, logger and counters.
func AcceptLoop(l net.Listener, accept func(net.Conn)) error {
	return (*Acceptor)(nil).Serve(l, accept)
}

// Peeked returns c reading through r, which has read ahead of c: a sniffer
// looks at the first bytes, and whoever handles the connection next still
// gets them. Half-close passes to c.
func Peeked(c net.Conn, r *bufio.Reader) net.Conn { return &peekedConn{Conn: c, r: r} }

// peekedConn is a conn that first yields what r read ahead of it.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// CloseWrite half-closes the underlying TCP connection.
func (p *peekedConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return p.Conn.Close()
}

// RawListener returns l accepting connections wrapped by Raw: for a
// listener whose connections are wrapped again (TLS) before anyone sees
// them.
func RawListener(l net.Listener) net.Listener { return rawListener{l} }

type rawListener struct{ net.Listener }

func (l rawListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Raw(c), nil
}

// An Awaiter is a connection that writes a request and waits for its
// answer in one call, without a read that finds nothing first (Raw's, on
// Linux): WriteAwait writes all of p or fails as Write does, then waits
// until the connection has something to read or its read deadline
// passes; the next Read reports a failed wait.
type Awaiter interface {
	net.Conn
	WriteAwait(p []byte) (int, error)
}
