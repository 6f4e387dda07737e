package tunnel

import (
	"context"
	"errors"
	"io"

	"golang.org/x/net/http2/hpack"
)

// Request streams carry ordinary HTTP/2 requests (RFC 9113 section 8.3)
// beside the CONNECT streams: the L7 proxies send each request on its own
// stream of the pooled connection, with the same flow control, output
// batching and reader as the tunnel.

// OpenRequest sends a request's header block (pseudo-header fields first)
// on a connection the caller reserved room on, followed by body as DATA.
// With end set the request ends there; otherwise Write and CloseWrite send
// the rest. It does not wait for the response: see Response. An error
// means nothing of the request reached the peer.
func (c *Conn) OpenRequest(fields []hpack.HeaderField, body []byte, end bool) (*Stream, error) {
	var s *Stream
	sent, built := false, false
	err := c.emit(func() error {
		built = true
		var err error
		if s, err = c.openLocked(true); err != nil {
			return err
		}
		if err := c.headersLocked(s.id, end && len(body) == 0, fields); err != nil {
			return err
		}
		if sent, err = s.dataLocked(body, end); sent && end {
			s.markSentEnd()
		}
		return err
	})
	if err != nil {
		if s != nil {
			if serr := s.Err(); errors.Is(serr, errRefused) {
				// The peer's GOAWAY came first and named an earlier
				// stream as its last: it never took this one, which may
				// go elsewhere, whatever the write then met.
				return nil, serr
			}
			s.abort(err, false)
		}
		return nil, c.notOpened(built, err)
	}
	if !sent {
		if err := s.sendRest(body, end); err != nil {
			return nil, err
		}
	} else if end {
		s.endSend()
	}
	return s, nil
}

// dataLocked appends body as DATA frames, ending the stream if end, when
// the windows take all of it now; omu is held. It reports whether it did:
// otherwise nothing was sent, and Write must send the body.
func (s *Stream) dataLocked(body []byte, end bool) (bool, error) {
	if len(body) == 0 {
		return true, nil
	}
	c := s.c
	c.mu.Lock()
	if int64(len(body)) > min(c.sendWindow, s.sendWindow) {
		c.mu.Unlock()
		return false, nil
	}
	max := c.peerFrame
	c.sentWork.Add(int64((len(body) + max - 1) / max))
	c.sendWindow -= int64(len(body))
	s.sendWindow -= int64(len(body))
	c.mu.Unlock()
	for len(body) > 0 {
		n := min(len(body), max)
		if err := c.fw.WriteData(s.id, end && n == len(body), body[:n]); err != nil {
			return false, err
		}
		body = body[n:]
	}
	return true, nil
}

// sendRest sends with Write what dataLocked could not.
func (s *Stream) sendRest(body []byte, end bool) error {
	if _, err := s.Write(body); err != nil {
		return err
	}
	if end {
		return s.closeSend()
	}
	return nil
}

// Response waits for the response to a request stream and returns its
// status and header fields. 1xx responses are skipped.
func (s *Stream) Response(ctx context.Context) (int, []hpack.HeaderField, error) {
	select {
	case <-s.resp:
		r := s.ans
		if r.err != nil {
			return 0, nil, r.err
		}
		return r.status, r.fields, nil
	case <-ctx.Done():
		s.abort(ctx.Err(), true)
		return 0, nil, ctx.Err()
	}
}

// Refused reports whether err means that the peer did not take the stream
// (it was going away or at its stream limit): the request may be sent
// again elsewhere whatever its method.
func Refused(err error) bool { return errors.Is(err, errRefused) }

// WriteResponse sends a response's header block and body; with end set the
// stream ends there. Later body bytes go with Write, and the end with
// CloseWrite.
func (s *Stream) WriteResponse(status int, fields []hpack.HeaderField, body []byte, end bool) error {
	if s.stopped.Load() {
		return s.stopErr()
	}
	sent := false
	err := s.c.emit(func() error {
		if err := s.c.responseHeadersLocked(s.id, end && len(body) == 0, status, fields); err != nil {
			return err
		}
		var err error
		if sent, err = s.dataLocked(body, end); sent && end {
			s.markSentEnd()
		}
		return err
	})
	if err != nil {
		return err
	}
	if !sent {
		return s.sendRest(body, end)
	}
	if end {
		s.endSend()
	}
	return nil
}

// Write sends p as DATA, waiting for the flow-control windows.
func (s *Stream) Write(p []byte) (int, error) {
	bp := smallBufs.Get().(*[]byte)
	defer smallBufs.Put(bp)
	buf := *bp
	sent := 0
	for sent < len(p) {
		n := copy(buf[frameHeaderLen:], p[sent:])
		if err := s.writeData(buf, n); err != nil {
			return sent, err
		}
		sent += n
	}
	return sent, nil
}

// CloseWrite ends the sending direction, with trailers if there are any.
func (s *Stream) CloseWrite(trailers []hpack.HeaderField) error {
	if len(trailers) == 0 {
		return s.closeSend()
	}
	if s.stopped.Load() {
		return s.stopErr()
	}
	if err := s.c.emit(func() error {
		if err := s.c.headersLocked(s.id, true, trailers); err != nil {
			return err
		}
		s.markSentEnd()
		return nil
	}); err != nil {
		return err
	}
	s.endSend()
	return nil
}

// endSend records that END_STREAM was sent.
func (s *Stream) endSend() {
	s.mu.Lock()
	s.st |= weEnded
	done := s.endedLocked()
	s.mu.Unlock()
	if done {
		s.c.forget(s)
	}
}

// Read reads the peer's DATA on a request stream: the request body on the
// server, the response body on the client. It returns io.EOF once the
// peer ended the stream, and the stream's error if it failed.
//
// Of a body with a content-length, the last byte is held back until the
// peer ends the stream: whoever reads the body to its declared length
// (an HTTP/1.1 app behind the proxy) must not see it complete before it
// is known to be (RFC 9113 section 8.1.1: more DATA, or none, makes the
// request malformed, and the stream fails instead).
func (s *Stream) Read(p []byte) (int, error) {
	s.mu.Lock()
	for s.readableLocked() == 0 && !s.st.has(peerEnded) && !s.st.has(aborted) {
		s.readable.Wait()
	}
	if k := s.readableLocked(); k > 0 && !s.st.has(aborted) {
		n := copy(p[:min(len(p), k)], s.pending[s.roff:])
		s.roff += n
		if s.roff == len(s.pending) {
			s.pending, s.roff = s.pending[:0], 0
		}
		inc := s.creditLocked(int64(n))
		s.mu.Unlock()
		s.sendUpdate(inc)
		return n, nil
	}
	err := s.err
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return 0, io.EOF
}

// readableLocked is how much of pending Read may hand out now.
func (s *Stream) readableLocked() int {
	k := len(s.pending) - s.roff
	if k > 0 && s.declared >= 0 && !s.st.has(peerEnded) && s.received.Load() == s.declared {
		k-- // the last byte, until the end is known
	}
	return k
}

// Trailers returns the trailer fields the peer sent; complete once Read
// has returned io.EOF.
func (s *Stream) Trailers() []hpack.HeaderField {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.trailers
}

// onTrailers takes a header block that ends the peer's direction.
func (s *Stream) onTrailers(b *headerBlock) {
	if s.request {
		s.mu.Lock()
		s.trailers = b.regularCopy()
		s.mu.Unlock()
	}
	s.deliver(nil, true, 0)
}

// Cancel resets the stream: the peer stops sending and the stream's
// readers and writers return an error.
func (s *Stream) Cancel(err error) { s.abort(err, true) }

// OnStop makes f run once if the stream stops early (reset or failed),
// at once if it already has.
func (s *Stream) OnStop(f func()) {
	s.mu.Lock()
	if s.st.has(aborted) {
		s.mu.Unlock()
		f()
		return
	}
	s.onStop = f
	s.mu.Unlock()
}

// Drained reports whether the peer has ended its direction and all it sent
// was read: for a request stream at its start, that it has no body.
func (s *Stream) Drained() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.has(peerEnded) && s.roff == len(s.pending)
}
