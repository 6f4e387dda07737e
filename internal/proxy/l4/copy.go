package l4

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
)

// bufSize is the copy buffer: large enough that bulk transfers move in big
// HTTP/2 frames, small enough to keep idle memory low (buffers are pooled).
const bufSize = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// copyBuf copies src to dst through a pooled buffer and returns the count,
// which it also adds to n as it goes (n may be nil). dst and src are
// wrapped so that io.CopyBuffer really uses the buffer: a *net.TCPConn
// destination would otherwise take over through ReadFrom and, with a
// source it cannot splice from (TLS, HTTP/2 bodies), allocate a fresh
// 32 KiB buffer for every connection.
//
// Between two plain TCP sockets (the pass-through gateway, and the edge in
// passthrough mode) copyTCP does the work: raw reads and writes through a
// buffer held only while the socket is readable, on Linux.
func copyBuf(dst io.Writer, src io.Reader, n *atomic.Int64) (int64, error) {
	if d, ok := dst.(*net.TCPConn); ok {
		if s, ok := src.(*net.TCPConn); ok {
			return copyTCP(d, s, n)
		}
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	if n != nil {
		return io.CopyBuffer(countingWriter{dst, n}, readerOnly{src}, *bp)
	}
	return io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
}

// countingWriter adds what it writes to n: a copy's progress, readable
// while it runs.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	k, err := c.w.Write(p)
	c.n.Add(int64(k))
	return k, err
}

type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// closeWrite half-closes c when it can, so the peer sees EOF while its
// answer can still come back.
func closeWrite(c io.Closer) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = netconn.CloseWrite(tc)
		return
	}
	type cw interface{ CloseWrite() error }
	if x, ok := c.(cw); ok {
		_ = x.CloseWrite()
		return
	}
	_ = c.Close()
}

// Join copies between two connections both ways until both directions
// end, passing half-closes on; once one direction has ended the other gets
// halfClose (zero: the default) to finish. It returns the bytes copied from
// a to b and from b to a. The caller closes both.
func Join(a, b net.Conn, halfClose time.Duration) (aToB, bToA int64) {
	return join(a, b, halfClose, nil, nil)
}

// join is Join that also adds its counts to ab and ba (either may be
// nil) as it copies.
func join(a, b net.Conn, halfClose time.Duration, ab, ba *atomic.Int64) (aToB, bToA int64) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		aToB, _ = copyBuf(b, a, ab)
		closeWrite(b)
	}()
	bToA, _ = copyBuf(a, b, ba)
	closeWrite(a)
	if !waitHalfClose(done, halfClose) {
		// Unblock the other copy, so that its count is final.
		a.Close()
		b.Close()
		<-done
	}
	return aToB, bToA
}

// inflight counts work in progress for a drain. Unlike a sync.WaitGroup it
// may be waited on while new work can still start (a stream that arrived
// just before the GOAWAY), which a WaitGroup forbids.
type inflight struct{ n atomic.Int64 }

func (f *inflight) add()  { f.n.Add(1) }
func (f *inflight) done() { f.n.Add(-1) }

// wait returns when no work is in progress, or with ctx's error.
func (f *inflight) wait(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for f.n.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// DefaultHalfCloseTimeout bounds how long a connection whose one side has
// finished waits for the other: a client that never closes must not pin a
// goroutine, a stream and an app connection forever.
const DefaultHalfCloseTimeout = 30 * time.Second

// waitHalfClose waits until done is closed or d (zero: the default) passes,
// and reports whether done was closed.
func waitHalfClose(done <-chan struct{}, d time.Duration) bool {
	if d == 0 {
		d = DefaultHalfCloseTimeout
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}
