package tunnel

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Every frame leaves through one output buffer. A goroutine with frames to
// send appends them under omu; if nobody is writing, it yields once to the
// goroutines ready to run and then writes the buffer out itself, together
// with whatever the others appended meanwhile (flushSoon). So when one
// stream is busy each frame leaves at once, and when many are the frames
// of many streams leave in one system call (and one TLS record): the
// per-request cost on a loaded connection is a fraction of a write.
const (
	// maxOut is how much may wait in the buffer before a goroutine sending
	// data waits for the writer: flow control for the local socket.
	maxOut = 256 << 10
	// maxCtrlOut bounds what the reader may queue (acknowledgements,
	// resets) for a peer that does not read: beyond it, the peer is cut
	// off rather than let it grow our memory.
	maxCtrlOut = 8 << 20
	// maxShared is the largest frame send copies into the buffer to share
	// a write; a larger one, when nothing is queued, is written as it is.
	maxShared = 16 << 10
)

// outWriter is the framer's destination: the output buffer (omu held).
type outWriter struct{ c *Conn }

func (w outWriter) Write(p []byte) (int, error) {
	w.c.out = append(w.c.out, p...)
	return len(p), nil
}

// send writes p, one or more whole frames, after what is queued. It waits
// while the buffer is full, so a fast stream is held back by the socket.
func (c *Conn) send(p []byte) error {
	c.omu.Lock()
	for c.writing && len(c.out) >= maxOut && c.werr == nil {
		c.ocond.Wait()
	}
	if c.werr != nil {
		err := c.werr
		c.omu.Unlock()
		return err
	}
	if !c.writing && len(c.out) == 0 && len(p) > maxShared {
		// Nothing queued and nobody writing: a large frame goes out as it
		// is, without a copy into the buffer.
		c.writing = true
		c.omu.Unlock()
		err := c.writeOut(p)
		c.omu.Lock()
		if err != nil && c.werr == nil {
			c.werr = err
		}
		return c.flushLocked()
	}
	c.out = append(c.out, p...)
	if c.writing {
		c.omu.Unlock()
		return nil // the writer takes it
	}
	return c.flushSoon()
}

// emit appends the frames build writes and sends them as send does.
// build runs under omu, so frames that must be in order on the wire (HPACK
// blocks, increasing stream IDs) are.
func (c *Conn) emit(build func() error) error {
	c.omu.Lock()
	for c.writing && len(c.out) >= maxOut && c.werr == nil {
		c.ocond.Wait()
	}
	if c.werr != nil {
		err := c.werr
		c.omu.Unlock()
		return err
	}
	if err := build(); err != nil {
		c.omu.Unlock()
		return err
	}
	if c.writing {
		c.omu.Unlock()
		return nil
	}
	return c.flushSoon()
}

// flushSoon becomes the writer and writes the buffer out. When other
// streams are open it first lets the goroutines that are ready to run go:
// under load they are other streams' handlers with frames of their own,
// which then join this write instead of each making one (and waking the
// peer for each). With 64 clients on one connection, requests went out
// 6-7 to a write instead of 1.1, and the L7 sidecars' CPU per request fell
// by a quarter. A lone stream does not yield: nobody could join it, and
// the yield would wake an idle P's thread for nothing (a single round trip
// took 30 % longer). omu is held on entry and released on return.
func (c *Conn) flushSoon() error {
	c.writing = true
	if c.open.Load() > 1 {
		c.omu.Unlock()
		runtime.Gosched()
		c.omu.Lock()
	}
	return c.flushLocked()
}

// flushLocked writes the buffer out until it is empty. omu is held and
// c.writing set on entry; omu is released on return.
func (c *Conn) flushLocked() error {
	for len(c.out) > 0 && c.werr == nil {
		buf := c.out
		c.out, c.spare = c.spare[:0], nil
		c.ctrlQueued = 0
		c.omu.Unlock()
		err := c.writeOut(buf)
		c.omu.Lock()
		if cap(buf) <= 1<<20 {
			c.spare = buf[:0] // keep a burst's buffer only if it is small
		}
		if err != nil && c.werr == nil {
			c.werr = err
		}
		c.ocond.Broadcast()
	}
	c.writing = false
	err := c.werr
	c.ocond.Broadcast()
	c.omu.Unlock()
	if err != nil {
		err = fmt.Errorf("tunnel: write: %w", err)
		c.fail(err)
	}
	return err
}

// writeOut writes p to the connection. Under TLS, a write larger than one
// record is corked so that it leaves in one socket write. A write that
// the peer does not take within WriteTimeout fails, and the connection
// with it. The deadline is moved at most once a second: the one writer
// (writing set) owns deadlineSet.
func (c *Conn) writeOut(p []byte) error {
	if now := time.Now(); now.Sub(c.deadlineSet) > time.Second && !c.finalFlush.Load() {
		c.nc.SetWriteDeadline(now.Add(c.cfg.WriteTimeout))
		c.deadlineSet = now
	}
	if k := c.cfg.Cork; k != nil && len(p) > 16<<10 {
		k.cork()
		_, err := c.nc.Write(p)
		if uerr := k.uncork(); err == nil {
			err = uerr
		}
		return err
	}
	_, err := c.nc.Write(p)
	return err
}

// queue appends the frames write makes and never waits: the reader uses
// it, and must go on reading whatever the socket does. When nobody is
// writing, the writer goroutine is woken to send them.
func (c *Conn) queue(write func(*http2.Framer) error) {
	c.queueFrame(write, false)
}

// queueFrame is queue; final is set for the GOAWAY that ends the
// connection, which goes even when the peer made us owe too much.
func (c *Conn) queueFrame(write func(*http2.Framer) error, final bool) {
	c.omu.Lock()
	if c.werr != nil || c.calming && !final {
		c.omu.Unlock()
		return
	}
	if len(c.out) > maxCtrlOut {
		c.omu.Unlock()
		go c.fail(errors.New("tunnel: peer does not read what we send"))
		return
	}
	if c.ctrlQueued++; c.ctrlQueued > maxQueuedControl && !final {
		// The peer makes us answer faster than it reads the answers.
		c.calming = true
		c.omu.Unlock()
		go c.flooded(floodControlQueue, int64(maxQueuedControl), false)
		return
	}
	err := write(c.fw)
	wake := !c.writing
	c.omu.Unlock()
	if err != nil {
		go c.fail(fmt.Errorf("tunnel: write: %w", err))
		return
	}
	if wake {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// writer sends what queue leaves when nobody else is writing.
func (c *Conn) writer() {
	for {
		select {
		case <-c.kick:
		case <-c.done:
			return
		}
		c.omu.Lock()
		if c.writing || len(c.out) == 0 {
			c.omu.Unlock()
			continue
		}
		c.writing = true
		c.flushLocked()
	}
}

// flushControl waits until the frames queued so far are written, or for a
// second; the connection is about to close.
func (c *Conn) flushControl() {
	c.finalFlush.Store(true)
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	c.omu.Lock()
	if !c.writing && len(c.out) > 0 {
		c.writing = true
		c.flushLocked()
		return
	}
	for c.writing && c.werr == nil {
		c.ocond.Wait()
	}
	c.omu.Unlock()
}

// writeHeaders sends one header block (HEADERS and, if it is larger than
// the peer's frame size, CONTINUATION frames).
func (c *Conn) writeHeaders(id uint32, end bool, fields ...hpack.HeaderField) error {
	return c.emit(func() error { return c.headersLocked(id, end, fields) })
}

// headersLocked appends a header block for stream id; omu is held.
func (c *Conn) headersLocked(id uint32, end bool, fields []hpack.HeaderField) error {
	return c.responseHeadersLocked(id, end, -1, fields)
}

// responseHeadersLocked is headersLocked for a response's header block
// when status is not -1: its :status field first, then fields (without a
// list of its own to hold them together: an allocation per response).
func (c *Conn) responseHeadersLocked(id uint32, end bool, status int, fields []hpack.HeaderField) error {
	c.sentWork.Add(1)
	c.hbuf.Reset()
	if status >= 0 {
		if err := c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: statusText(status)}); err != nil {
			return err
		}
	}
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	c.mu.Lock()
	max := c.peerFrame
	c.mu.Unlock()
	block := c.hbuf.Bytes()
	first := block[:min(len(block), max)]
	block = block[len(first):]
	if err := c.fw.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0}); err != nil {
		return err
	}
	for len(block) > 0 {
		frag := block[:min(len(block), max)]
		block = block[len(frag):]
		if err := c.fw.WriteContinuation(id, len(block) == 0, frag); err != nil {
			return err
		}
	}
	return nil
}

// statusText is the decimal text of an HTTP status code; the common ones
// (those of HPACK's static table and a few more) without an allocation.
func statusText(code int) string {
	switch code {
	case 200:
		return "200"
	case 204:
		return "204"
	case 206:
		return "206"
	case 301:
		return "301"
	case 302:
		return "302"
	case 304:
		return "304"
	case 400:
		return "400"
	case 403:
		return "403"
	case 404:
		return "404"
	case 500:
		return "500"
	case 502:
		return "502"
	case 503:
		return "503"
	}
	return strconv.Itoa(code)
}
