package tunnel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// ReasonHeader carries a human-readable reason with a refusal.
const ReasonHeader = "trellis-reason"

// StatusError is a stream the peer answered with a status other than 200.
type StatusError struct {
	Status int
	Reason string
}

func (e *StatusError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("tunnel: peer answered %d", e.Status)
	}
	return fmt.Sprintf("tunnel: peer answered %d: %s", e.Status, e.Reason)
}

var (
	errHalfClose = errors.New("tunnel: one direction ended and the other did not within the half-close timeout")
	errRefusedUs = errors.New("tunnel: stream refused")
	errAbandoned = errors.New("tunnel: stream abandoned by its handler")
)

type response struct {
	status int
	reason string
	fields []hpack.HeaderField
	err    error
}

// Stream is one stream of the connection. A CONNECT stream is a TCP
// connection carried through the tunnel; its local end is a socket given
// to Splice. A request stream is one HTTP request and its response, whose
// bodies are read with Read and sent with Write.
type Stream struct {
	c  *Conn
	id uint32
	// Authority is the :authority the caller asked for, and Header the
	// other header fields of a CONNECT (server side).
	Authority string
	Header    map[string]string
	// Method, Scheme, Path and Fields (in order, names in lowercase) are
	// a request's (server side, Config.Requests).
	Method, Scheme, Path string
	Fields               []hpack.HeaderField

	request bool
	// declared is the request's content-length, -1 if none (server side;
	// set before the stream is handed out, read by the reader and Read).
	declared int64

	// resp is signalled, once, when answer holds the answer to a client's
	// stream (a channel of values with pointers would cost a second
	// allocation per stream, for its buffer).
	resp     chan struct{}
	ans      response    // set once under mu (answered), read by the opener after resp
	stopped  atomic.Bool // reset or failed: no more frames either way
	received atomic.Int64
	// sent counts the payload Splice sent, as it goes: Progress reads it
	// while the stream is open.
	sent atomic.Int64
	// activity counts frames either way; keepAlive compares it with seen
	// (its own, under c.mu, as quietSince) to find idle streams.
	activity   atomic.Uint32
	seen       uint32
	quietSince time.Time

	sendWindow int64 // under c.mu

	mu           sync.Mutex
	sink         net.Conn
	raw          syscall.RawConn // sink's socket, for non-blocking writes
	rawWrite     func(fd uintptr) bool
	wbuf         []byte // tryWrite's argument and results, for rawWrite
	wn           int
	werr         error
	pending      []byte // from the peer, not yet taken by sink
	spare        []byte
	st           streamState // state.go
	flushing     bool        // a flusher goroutine is writing pending to the sink
	gotResp      bool        // client: the final response came
	recvFinished bool        // the peer's END_STREAM reached the sink, or the stream stopped
	answered     bool        // ans is set
	err          error       // why the stream stopped, with aborted set
	recvWindow   int64       // what the peer may still send
	window       int64       // recvWindow when all is acknowledged; grows (creditLocked)
	unacked      int64
	halfTimer    *time.Timer
	recvDone     chan struct{} // closed with recvFinished; made by Splice only
	readable     sync.Cond     // request streams (L set): data, the end or a failure arrived
	roff         int           // request streams: what Read took of pending
	trailers     []hpack.HeaderField
	onStop       func()
}

// Open starts a CONNECT stream to authority on a connection the caller
// reserved room on (Reserve) and waits for the peer's answer. It returns a
// *StatusError when the peer refused the stream; any other error means the
// peer took nothing from the stream, so another peer may be tried.
//
// header adds header fields to the CONNECT (lowercase names).
func (c *Conn) Open(ctx context.Context, authority string, header ...hpack.HeaderField) (*Stream, error) {
	fields := append([]hpack.HeaderField{
		{Name: ":method", Value: "CONNECT"},
		{Name: ":authority", Value: authority},
	}, header...)
	var s *Stream
	built := false
	err := c.emit(func() error {
		built = true
		var err error
		if s, err = c.openLocked(false); err != nil {
			return err
		}
		return c.headersLocked(s.id, false, fields)
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
	select {
	case <-s.resp:
		r := s.ans
		switch {
		case r.err != nil:
			return nil, r.err
		case r.status != 200:
			return nil, &StatusError{Status: r.status, Reason: r.reason}
		}
		return s, nil
	case <-ctx.Done():
		s.abort(ctx.Err(), true)
		return nil, ctx.Err()
	}
}

// notOpened is the error of a stream that failed before its HEADERS were
// built (built false: the connection had already failed, and the
// reservation is given back): the peer saw nothing of it, so it is
// refused, which callers may send again elsewhere.
func (c *Conn) notOpened(built bool, err error) error {
	if built {
		return err
	}
	c.Unreserve()
	if errors.Is(err, errRefused) {
		return err
	}
	return fmt.Errorf("%w: %w", errRefused, err)
}

// peerEnded reports whether the peer ended its direction (END_STREAM).
func (s *Stream) peerEnded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.has(peerEnded)
}

// responded reports whether a client stream has its final response.
func (s *Stream) responded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gotResp
}

// testHookResponse, when a test sets it, runs as the reader takes a
// response, before the stream's opener gets it.
var testHookResponse func(*Stream)

// onResponse takes the peer's response HEADERS on a client stream.
func (s *Stream) onResponse(b *headerBlock) {
	if testHookResponse != nil {
		testHookResponse(s)
	}
	status, err := strconv.Atoi(b.pseudo(":status"))
	if err != nil {
		s.c.resetStream(s.id, http2.ErrCodeProtocol, errors.New("tunnel: response without a valid :status"))
		return
	}
	if status >= 100 && status < 200 {
		return // informational; the real answer follows
	}
	s.mu.Lock()
	s.gotResp = true
	s.mu.Unlock()
	if s.request {
		s.answer(response{status: status, fields: b.regularCopy()})
		if b.endStream {
			s.deliver(nil, true, 0)
		}
		return
	}
	var reason string
	for _, hf := range b.regular() {
		if hf.Name == ReasonHeader {
			reason = hf.Value
		}
	}
	s.answer(response{status: status, reason: reason})
	if status != 200 {
		s.abort(&StatusError{Status: status, Reason: reason}, !b.endStream)
		return
	}
	if b.endStream {
		s.deliver(nil, true, 0)
	}
}

// answer hands the response to the stream's opener. It never waits: the
// one slot may hold the error of an abort already (a caller's context
// ended), and the reader, which calls this, must never block on a stream.
func (s *Stream) answer(r response) {
	s.mu.Lock()
	if s.answered {
		s.mu.Unlock()
		return
	}
	s.answered, s.ans = true, r
	s.mu.Unlock()
	s.resp <- struct{}{} // the one send: the slot is free
}

// Accept answers the caller's CONNECT with 200; Splice then carries it.
func (s *Stream) Accept() error {
	if s.stopped.Load() {
		return s.stopErr()
	}
	return s.c.writeHeaders(s.id, false, hpack.HeaderField{Name: ":status", Value: "200"})
}

// Refuse answers the caller's CONNECT with status and a reason and ends the
// stream.
func (s *Stream) Refuse(status int, reason string) {
	if s.stopped.Load() {
		return
	}
	_ = s.c.emit(func() error {
		if err := s.c.headersLocked(s.id, true, []hpack.HeaderField{
			{Name: ":status", Value: strconv.Itoa(status)},
			{Name: ReasonHeader, Value: reason}}); err != nil {
			return err
		}
		s.markSentEnd()
		return nil
	})
	s.mu.Lock()
	reset := !s.st.has(peerEnded)
	s.mu.Unlock()
	s.abort(errRefusedUs, false)
	if reset {
		// The caller must not send on: tell it the stream is over.
		s.c.sendReset(s.id, http2.ErrCodeNo)
	}
}

// Splice carries bytes between the stream and local until both directions
// have ended or the stream fails, then closes local. It returns the bytes
// sent to and received from the peer. When one direction ends first the
// other gets HalfCloseTimeout to follow.
func (s *Stream) Splice(local net.Conn) (sent, received int64) {
	s.attach(local)
	sent, err := s.copyFrom(local)
	if err != nil {
		s.abort(err, true)
	} else {
		t := time.NewTimer(s.c.cfg.HalfCloseTimeout)
		select {
		case <-s.recvDone:
		case <-t.C:
			s.abort(errHalfClose, true)
		}
		t.Stop()
	}
	local.Close()
	return sent, s.received.Load()
}

// Progress returns the payload bytes Splice has sent and the stream has
// received so far; it may be called while the stream is open.
func (s *Stream) Progress() (sent, received int64) {
	return s.sent.Load(), s.received.Load()
}

// Err says why the stream stopped early; nil if it has not.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close resets the stream and closes its local end.
func (s *Stream) Close() error {
	s.abort(errors.New("tunnel: stream closed"), true)
	return nil
}

func (s *Stream) stopErr() error {
	if err := s.Err(); err != nil {
		return err
	}
	return ErrClosed
}

// attach makes sink the stream's local end and hands it whatever the peer
// already sent.
func (s *Stream) attach(sink net.Conn) {
	var raw syscall.RawConn
	switch sc := sink.(type) {
	// Only plain sockets: a wrapper (TLS, a peeked conn) must see its own
	// Write called.
	case *net.TCPConn:
		raw, _ = sc.SyscallConn()
	case *net.UnixConn:
		raw, _ = sc.SyscallConn()
	}
	s.mu.Lock()
	// Only a spliced stream waits for its receiving side to finish: the
	// channel is made here, not for every stream.
	s.recvDone = make(chan struct{})
	if s.recvFinished {
		close(s.recvDone)
	}
	if s.st.has(aborted) {
		s.mu.Unlock()
		sink.Close()
		return
	}
	s.sink, s.raw = sink, raw
	// Made once: a closure per write would allocate on every frame.
	s.rawWrite = func(fd uintptr) bool {
		s.wn, s.werr = rawWrite(fd, s.wbuf)
		return true // never wait for the socket: the flusher does that
	}
	if len(s.pending) > 0 {
		s.flushing = true
		go s.flush()
	} else if s.st.has(peerEnded) {
		s.finishRecvLocked()
	}
	s.mu.Unlock()
}

// deliver takes a DATA payload (n bytes of flow control, padding included)
// from the reader. It must not block: it writes to the sink only when the
// socket takes the bytes at once and leaves the rest to a flusher.
func (s *Stream) deliver(p []byte, end bool, n int64) {
	s.mu.Lock()
	if s.st.has(ended) {
		s.mu.Unlock()
		return
	}
	if s.st.has(peerEnded) {
		// The reader checks (Conn.onData); trailers after the end too.
		s.mu.Unlock()
		return
	}
	if n > s.recvWindow {
		s.mu.Unlock()
		s.c.streamError(s.id, http2.ErrCodeFlowControl, "stream_flow_control", errors.New("tunnel: peer overran the stream window"))
		return
	}
	s.recvWindow -= n
	s.activity.Add(1)
	credit := n - int64(len(p)) // padding is never delivered
	s.received.Add(int64(len(p)))
	var werr error
	if len(p) > 0 {
		if s.sink != nil && !s.flushing {
			var w int
			w, werr = s.tryWrite(p)
			credit += int64(w)
			if w < len(p) && werr == nil {
				s.pending = append(s.spare[:0], p[w:]...)
				s.spare = nil
				s.flushing = true
				go s.flush()
			}
		} else {
			if s.roff > 0 && s.roff >= len(s.pending)/2 {
				// Drop what Read took. A reader that never quite
				// catches up would otherwise keep every byte ever
				// received in front of what it has not: the window
				// bounds what is unread, not what was read.
				n := copy(s.pending, s.pending[s.roff:])
				s.pending, s.roff = s.pending[:n], 0
			}
			s.pending = append(s.pending, p...)
		}
	}
	if end {
		s.st |= peerEnded
		if s.sink != nil && !s.flushing {
			s.finishRecvLocked()
		}
	}
	inc := s.creditLocked(credit)
	done := s.endedLocked()
	if s.readable.L != nil {
		s.readable.Broadcast()
	}
	s.mu.Unlock()
	if werr != nil {
		// The local end is gone.
		s.abort(fmt.Errorf("tunnel: write to local end: %w", werr), true)
		return
	}
	s.sendUpdate(inc)
	if done {
		s.c.forget(s)
	}
}

// tryWrite writes p to the sink if its socket takes it without waiting;
// s.mu must be held.
func (s *Stream) tryWrite(p []byte) (int, error) {
	if s.raw == nil {
		return 0, nil
	}
	s.wbuf = p
	err := s.raw.Write(s.rawWrite)
	s.wbuf = nil
	n, werr := s.wn, s.werr
	if err != nil {
		return 0, err
	}
	if n < 0 {
		n = 0
	}
	if werr == syscall.EAGAIN || werr == syscall.EINTR {
		werr = nil
	}
	return n, werr
}

// flush writes pending bytes to the sink, waiting for it, until none are
// left.
func (s *Stream) flush() {
	var buf []byte
	for {
		s.mu.Lock()
		if buf != nil && s.spare == nil {
			s.spare = buf[:0]
		}
		buf = s.pending
		s.pending = nil
		if len(buf) == 0 || s.st.has(aborted) {
			s.flushing = false
			if s.st.has(peerEnded) {
				s.finishRecvLocked()
			}
			s.mu.Unlock()
			return
		}
		sink := s.sink
		s.mu.Unlock()
		n, err := sink.Write(buf)
		s.mu.Lock()
		inc := s.creditLocked(int64(n))
		s.mu.Unlock()
		s.sendUpdate(inc)
		if err != nil {
			s.mu.Lock()
			s.flushing = false
			s.mu.Unlock()
			s.abort(fmt.Errorf("tunnel: write to local end: %w", err), true)
			return
		}
	}
}

// finishRecvLocked ends the peer's direction at the sink: a TCP half-close,
// so the local end sees EOF and can still answer.
func (s *Stream) finishRecvLocked() {
	if s.recvFinished {
		return
	}
	s.recvFinished = true
	if cw, ok := s.sink.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	if s.recvDone != nil {
		close(s.recvDone)
	}
	if !s.st.has(weEnded) && !s.st.has(ended) {
		// The local end now has HalfCloseTimeout to finish too.
		s.halfTimer = time.AfterFunc(s.c.cfg.HalfCloseTimeout, func() { s.abort(errHalfClose, true) })
	}
}

// creditLocked counts n bytes taken by the sink and returns the window
// increment to send, if it is time to send one.
func (s *Stream) creditLocked(n int64) uint32 {
	if s.st.has(peerEnded) || s.st.has(ended) {
		return 0
	}
	s.unacked += n
	if s.unacked < s.window/4 {
		return 0
	}
	inc := s.unacked
	if len(s.pending) == s.roff && s.window < int64(s.c.cfg.StreamWindow) {
		// The reader has taken all that came: it keeps up, and may
		// have more (Config.InitialStreamWindow).
		grow := min(s.window, int64(s.c.cfg.StreamWindow)-s.window)
		s.window += grow
		inc += grow
	}
	s.recvWindow += inc
	s.unacked = 0
	return uint32(inc)
}

func (s *Stream) sendUpdate(inc uint32) {
	if inc == 0 {
		return
	}
	id := s.id
	s.c.queue(func(fw *http2.Framer) error { return fw.WriteWindowUpdate(id, inc) })
}

// endedLocked marks the stream ended once both directions are, and reports
// whether this call did.
func (s *Stream) endedLocked() bool {
	if s.st.has(ended) || !s.st.has(peerEnded|weEnded) {
		return false
	}
	s.st |= ended
	if s.halfTimer != nil {
		s.halfTimer.Stop()
	}
	return true
}

// copyFrom sends what local sends as DATA frames and ends the stream's
// sending direction when local reaches EOF.
//
// It reads into a small buffer and moves to a large one only while reads
// fill the small one: an idle or chatty stream holds 16 KiB, a bulk
// transfer moves in frames of up to 128 KiB.
func (s *Stream) copyFrom(local net.Conn) (int64, error) {
	small, large := smallBufs.Get().(*[]byte), (*[]byte)(nil)
	buf, shortReads := *small, 0
	defer func() {
		smallBufs.Put(small)
		if large != nil {
			largeBufs.Put(large)
		}
	}()
	var sent int64
	for {
		n, rerr := local.Read(buf[frameHeaderLen:])
		if n > 0 {
			if err := s.writeData(buf, n); err != nil {
				return sent, err
			}
			sent += int64(n)
			s.sent.Add(int64(n))
		}
		switch {
		case rerr == io.EOF:
			return sent, s.closeSend()
		case rerr != nil:
			if s.stopped.Load() {
				return sent, s.stopErr()
			}
			return sent, rerr
		case n == len(buf)-frameHeaderLen && large == nil:
			large = largeBufs.Get().(*[]byte)
			buf, shortReads = *large, 0
		case large != nil && n < len(*small)-frameHeaderLen:
			// Many short reads in a row: the burst is over.
			if shortReads++; shortReads == 64 {
				largeBufs.Put(large)
				large, buf = nil, *small
			}
		case large != nil:
			shortReads = 0
		}
	}
}

func bufPool(size int) *sync.Pool {
	return &sync.Pool{New: func() any {
		b := make([]byte, frameHeaderLen+size)
		return &b
	}}
}

var (
	smallBufs = bufPool(16 << 10)
	largeBufs = bufPool(128 << 10)
)

const flagEndStream = 0x1

func putFrameHeader(h []byte, length int, flags byte, id uint32) {
	h[0], h[1], h[2] = byte(length>>16), byte(length>>8), byte(length)
	h[3] = byte(http2.FrameData)
	h[4] = flags
	binary.BigEndian.PutUint32(h[5:], id&(1<<31-1))
}

// writeData sends buf[9:9+n] as DATA frames, each as large as the windows
// and the peer's frame size allow. Each frame's header is written over the
// 9 bytes before its payload, which are free (the buffer's head, or the
// tail of a payload already sent), so a frame goes out in one write.
func (s *Stream) writeData(buf []byte, n int) error {
	off, end := frameHeaderLen, frameHeaderLen+n
	for off < end {
		k, err := s.reserveSend(end - off)
		if err != nil {
			return err
		}
		putFrameHeader(buf[off-frameHeaderLen:off], k, 0, s.id)
		s.activity.Add(1)
		if err := s.c.send(buf[off-frameHeaderLen : off+k]); err != nil {
			return err
		}
		off += k
	}
	return nil
}

// reserveSend waits until the windows allow sending and takes up to want
// bytes of them.
func (s *Stream) reserveSend(want int) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.closed {
			return 0, c.err
		}
		if s.stopped.Load() {
			return 0, s.stopErr()
		}
		k := min(int64(want), int64(c.peerFrame), c.sendWindow, s.sendWindow)
		if k > 0 {
			c.sendWindow -= k
			s.sendWindow -= k
			c.sentWork.Add(1)
			return int(k), nil
		}
		c.cond.Wait()
	}
}

// closeSend ends the sending direction with an empty END_STREAM frame.
func (s *Stream) closeSend() error {
	if s.stopped.Load() {
		return s.stopErr()
	}
	var h [frameHeaderLen]byte
	putFrameHeader(h[:], 0, flagEndStream, s.id)
	s.markSentEnd()
	if err := s.c.send(h[:]); err != nil {
		return err
	}
	s.mu.Lock()
	done := s.endedLocked()
	if s.halfTimer != nil && !done {
		s.halfTimer.Stop()
	}
	s.mu.Unlock()
	if done {
		s.c.forget(s)
	}
	return nil
}

// markSentEnd records that our END_STREAM is on its way, before it can
// reach the peer: a frame the peer sends after reading it must find the
// stream closed on our side too (RFC 9113 section 5.1), not half-closed.
// The stream is forgotten later, by whoever sent it (endedLocked).
func (s *Stream) markSentEnd() {
	s.mu.Lock()
	s.st |= weEnded
	s.mu.Unlock()
}

// endState reports which directions have ended: the peer's (END_STREAM
// received) and ours (END_STREAM sent or on its way).
func (s *Stream) endState() (recv, sent bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.has(peerEnded), s.st.has(weEnded)
}

// abort stops the stream with err: the local end is closed and, when rst
// is set, the peer gets RST_STREAM CANCEL. Later calls do nothing.
func (s *Stream) abort(err error, rst bool) {
	s.mu.Lock()
	if s.st.has(ended) {
		s.mu.Unlock()
		return
	}
	s.st |= ended | aborted
	s.err = err
	s.stopped.Store(true)
	if !s.recvFinished {
		s.recvFinished = true
		if s.recvDone != nil {
			close(s.recvDone)
		}
	}
	if s.halfTimer != nil {
		s.halfTimer.Stop()
	}
	if s.readable.L != nil {
		s.readable.Broadcast()
	}
	onStop := s.onStop
	sink := s.sink
	s.mu.Unlock()
	if onStop != nil {
		onStop()
	}
	if s.resp != nil {
		s.answer(response{err: err})
	}
	if sink != nil {
		sink.Close()
	}
	s.c.forget(s)
	if rst {
		s.c.sendReset(s.id, http2.ErrCodeCancel)
	}
}

// openLocked starts a stream of ours on a reserved slot; omu is held, so
// that stream IDs reach the peer in increasing order. A request stream
// gets its reader's condition here, under c.mu, before the peer can
// answer.
func (c *Conn) openLocked(request bool) (*Stream, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reserved--
	// A connection we shut down still opens the streams reserved before
	// (see Shutdown); one the peer is leaving takes none.
	if c.closed || c.peerAway {
		return nil, errRefused
	}
	id := c.nextID
	c.nextID += 2
	s := c.newStreamLocked(id)
	if request {
		s.request = true
		s.readable.L = &s.mu
	}
	return s, nil
}
