package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Config tunes a connection. The zero value is usable: every zero field
// takes the default named beside it.
type Config struct {
	// MaxStreams bounds the streams a peer may have open on a server
	// connection (1000).
	MaxStreams uint32
	// StreamWindow is the largest receive window of one stream (1 MiB):
	// how much a peer may send before the local socket (or a request
	// stream's reader) has taken it, so what one stream may hold in
	// memory. 4 MiB moved bulk no faster on loopback and let a 100 MiB
	// request body grow a sidecar by 40 MiB.
	StreamWindow uint32
	// InitialStreamWindow is a stream's receive window at its start (64
	// KiB, at most StreamWindow). It doubles, up to StreamWindow, each time
	// the stream's reader has taken all that came when credit is returned:
	// a reader that keeps up earns the large window bulk needs, and one
	// that stalls from the start (a client that never reads its response)
	// holds tens of KiB, not a megabyte.
	InitialStreamWindow uint32
	// StreamIdleTimeout resets a request stream on which no frame has come
	// or gone for this long (5 minutes, as Envoy's stream idle timeout): a
	// stalled reader is not kept for ever. ConnectIdleTimeout is the same
	// for CONNECT streams, TCP connections that may idle in a client's
	// pool (1 hour, as Envoy's TCP proxy).
	StreamIdleTimeout, ConnectIdleTimeout time.Duration
	// WriteTimeout closes a connection whose peer has taken none of what
	// we write for this long (60 s).
	WriteTimeout time.Duration
	// ConnWindow is the receive window of the connection (32 MiB).
	ConnWindow uint32
	// MaxFrameSize is the largest DATA frame accepted and sent (128 KiB).
	MaxFrameSize uint32
	// IdleTimeout closes a connection that has had no stream for this long
	// (5 minutes).
	IdleTimeout time.Duration
	// PingAfter sends a PING on a connection from which nothing was read
	// for this long, and closes it when nothing comes back for as long
	// again (15 s): a peer that vanished without a FIN is noticed.
	PingAfter time.Duration
	// Requests, on a server, hands ordinary HTTP/2 requests (any method
	// but CONNECT) to the handler too, as streams with Method set.
	Requests bool
	// PeerIsProxy, on a server, says the peer is a proxy that relays its
	// own clients' resets (a sidecar, on the sidecar-to-sidecar port):
	// they are not counted against the connection's reset budget, which
	// would end it for every client of that proxy when one of them
	// floods. The clients' resets are counted where they arrive, on the
	// proxy's own listener; here the handlers still running bound the
	// work, as on every connection.
	PeerIsProxy bool
	// MaxHeaderBytes bounds the header list a peer may send (16 KiB); a
	// larger request is answered 431.
	MaxHeaderBytes uint32
	// HalfCloseTimeout bounds how long a stream whose one direction has
	// ended waits for the other (30 s).
	HalfCloseTimeout time.Duration
	// Cork, when set, is the connection under the TLS layer of nc (see
	// NewCork); each frame write then leaves in one socket write.
	Cork *Cork
	// Logger; nil discards.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxStreams, 1000)
	def(&c.StreamWindow, 1<<20)
	def(&c.InitialStreamWindow, min(64<<10, c.StreamWindow))
	c.InitialStreamWindow = min(c.InitialStreamWindow, c.StreamWindow)
	def(&c.ConnWindow, 32<<20)
	def(&c.MaxFrameSize, 128<<10)
	def(&c.MaxHeaderBytes, 16<<10)
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 5 * time.Minute
	}
	if c.PingAfter == 0 {
		c.PingAfter = 15 * time.Second
	}
	if c.HalfCloseTimeout == 0 {
		c.HalfCloseTimeout = 30 * time.Second
	}
	if c.StreamIdleTimeout == 0 {
		c.StreamIdleTimeout = 5 * time.Minute
	}
	if c.ConnectIdleTimeout == 0 {
		c.ConnectIdleTimeout = time.Hour
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Limits of HTTP/2 itself (RFC 9113 section 6.5.2 and 6.9.1).
const (
	initialWindow  = 65535
	minFrameSize   = 16384
	maxFrameLimit  = 1<<24 - 1
	maxWindow      = 1<<31 - 1
	frameHeaderLen = 9
	// maxResetsPerSecond bounds the streams a peer may open and reset in
	// one second (the rapid reset attack, CVE-2023-44487): each costs a
	// handler and a dial of the app, and reset streams do not count
	// against the concurrent stream limit.
	maxResetsPerSecond = 1000
)

// recentResets is how many of the streams it reset a connection
// remembers, to ignore their frames in flight. Past that, a late frame on
// one gets a RST_STREAM of its own, which the peer ignores.
const recentResets = 256

// ErrClosed is returned for work on a closed connection.
var ErrClosed = errors.New("tunnel: connection closed")

// errRefused means the peer did not take a stream: it is going away or at
// its stream limit. Nothing was sent on the stream, so it can be retried.
var errRefused = errors.New("tunnel: stream refused by peer")

// Conn is one HTTP/2 connection carrying CONNECT streams. A client Conn
// (NewClient) opens streams; a server Conn (Serve) hands each new stream to
// its handler.
type Conn struct {
	cfg     Config
	nc      net.Conn
	client  bool
	handler func(*Stream)

	// The output (write.go): fw, henc and hbuf are used under omu only.
	omu     sync.Mutex
	ocond   *sync.Cond // the buffer was written, or writing failed
	out     []byte     // frames waiting to be written
	spare   []byte
	writing bool // a goroutine is writing out
	// deadlineSet is when the writer last moved the write deadline;
	// finalFlush: the connection is closing, and flushControl's short
	// deadline stands (writeOut).
	deadlineSet time.Time
	finalFlush  atomic.Bool
	werr        error
	kick        chan struct{}
	fw          *http2.Framer
	henc        *hpack.Encoder
	hbuf        bytes.Buffer
	// ctrlQueued counts the frames queue added since the writer last
	// took the buffer: acknowledgements the peer made us owe.
	ctrlQueued int
	calming    bool // the control queue overflowed; only the GOAWAY goes

	fr *http2.Framer // the reader's
	hr *headerReader // the reader's
	// calmed: the peer flooded us and got GOAWAY; its streams in flight
	// are finishing (the reader's, see calm).
	calmed bool

	// Read by the reader only.
	recvWindow  int64 // what the peer may still send on the connection
	recvUnacked int64 // consumed, not yet returned in a WINDOW_UPDATE
	flood       floodGuard
	frames      atomic.Uint64
	// sentWork counts HEADERS and DATA frames sent: the work that earns a
	// peer its WINDOW_UPDATEs and PINGs (flood.go).
	sentWork atomic.Int64

	// The handlers' workers (workers.go): Run waits for them.
	work    chan *Stream
	workers sync.WaitGroup
	// running counts the handlers that have not returned, reset streams'
	// among them: at twice MaxStreams, new streams are refused, so that
	// streams opened and reset at once (the rapid reset attack) cannot
	// pile up work that the stream limit does not see.
	running atomic.Int32

	mu             sync.Mutex
	cond           *sync.Cond // send windows grew, or a stream or the conn ended
	streams        map[uint32]*Stream
	open           atomic.Int32 // len(streams), read without mu
	nextID         uint32       // client: the next stream ID
	lastPeerID     uint32       // server: the highest stream ID the peer opened
	reserved       int          // client: slots promised by Reserve, not yet opened
	peerMaxStreams uint32
	peerWindow     int64 // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerFrame      int
	sendWindow     int64                // what we may still send on the connection
	goingAway      bool                 // no new streams; close when the last one ends
	peerAway       bool                 // the peer sent GOAWAY: it takes no new stream of ours
	started        bool                 // server: SETTINGS sent, so a GOAWAY may follow
	resets         [recentResets]uint32 // the streams we reset lately (sendReset)
	calmTimer      *time.Timer          // ends a calmed connection (calm)
	nextReset      int
	closed         bool
	err            error
	idleSince      time.Time
	done           chan struct{}
}

func newConn(nc net.Conn, cfg Config, client bool) *Conn {
	cfg = cfg.withDefaults()
	c := &Conn{
		cfg:            cfg,
		nc:             nc,
		client:         client,
		fr:             http2.NewFramer(nil, nc),
		kick:           make(chan struct{}, 1),
		work:           make(chan *Stream),
		recvWindow:     int64(cfg.ConnWindow),
		streams:        map[uint32]*Stream{},
		nextID:         1,
		peerMaxStreams: 100, // until the peer's SETTINGS say (RFC 9113 recommends at least 100)
		peerWindow:     initialWindow,
		peerFrame:      minFrameSize,
		sendWindow:     initialWindow,
		idleSince:      time.Now(),
		done:           make(chan struct{}),
	}
	c.cond = sync.NewCond(&c.mu)
	c.ocond = sync.NewCond(&c.omu)
	c.fw = http2.NewFramer(outWriter{c}, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.fr.SetReuseFrames()
	c.fr.SetMaxReadFrameSize(cfg.MaxFrameSize)
	c.hr = newHeaderReader(cfg.MaxHeaderBytes)
	c.hr.empty = func() error {
		if c.over(floodEmptyContinuation) {
			return floodError{kind: floodEmptyContinuation}
		}
		return nil
	}
	return c
}

// NewClient starts the client side of a connection on nc, which is
// already secured (and its peer checked) by the caller.
func NewClient(nc net.Conn, cfg Config) (*Conn, error) {
	c := newConn(nc, cfg, true)
	var b bytes.Buffer
	b.WriteString(http2.ClientPreface)
	fw := http2.NewFramer(&b, nil)
	_ = fw.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: c.cfg.InitialStreamWindow},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: c.cfg.MaxFrameSize},
	)
	_ = fw.WriteWindowUpdate(0, c.cfg.ConnWindow-initialWindow)
	if _, err := nc.Write(b.Bytes()); err != nil {
		nc.Close()
		return nil, fmt.Errorf("tunnel: send preface: %w", err)
	}
	go c.writer()
	go c.keepAlive()
	go c.readLoop()
	return c, nil
}

// NewServer makes the server side of a connection on nc, already secured
// by the caller; Run serves it. handler runs in a new goroutine for every
// stream the peer opens and must Accept and Splice the stream, or Refuse it.
func NewServer(nc net.Conn, cfg Config, handler func(*Stream)) *Conn {
	c := newConn(nc, cfg, false)
	c.handler = handler
	return c
}

// Run serves a server Conn made by NewServer until it ends and returns why. io.EOF means the peer closed it cleanly.
func (c *Conn) Run() error {
	deadline := time.Now().Add(10 * time.Second)
	c.nc.SetReadDeadline(deadline)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.nc, preface); err != nil || string(preface) != http2.ClientPreface {
		if err == nil {
			err = errors.New("tunnel: peer did not send the HTTP/2 preface")
		}
		c.fail(err) // closes Done, for those who wait on it
		return err
	}
	c.nc.SetReadDeadline(time.Time{})
	var b bytes.Buffer
	fw := http2.NewFramer(&b, nil)
	_ = fw.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.cfg.MaxStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: c.cfg.InitialStreamWindow},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: c.cfg.MaxFrameSize},
	)
	_ = fw.WriteWindowUpdate(0, c.cfg.ConnWindow-initialWindow)
	if _, err := c.nc.Write(b.Bytes()); err != nil {
		c.fail(err)
		return err
	}
	c.mu.Lock()
	c.started = true
	early := c.goingAway
	c.goingAway = false
	c.mu.Unlock()
	go c.writer()
	go c.keepAlive()
	if early {
		// Shutdown came before our SETTINGS could go out: its GOAWAY
		// goes now, in its place after them.
		c.Shutdown()
	}
	c.readLoop()
	// The connection has ended, and with it every stream: their handlers
	// return, and Run with them, owning them.
	c.workers.Wait()
	return c.Err()
}

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err says why the connection ended; nil while it runs.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Usable reports whether the connection takes new streams.
func (c *Conn) Usable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && !c.goingAway
}

// Reserve claims room for one stream that Open will use; it is false when
// the connection is at the peer's stream limit or going away. Every true
// Reserve must be followed by Open or Unreserve.
func (c *Conn) Reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.goingAway || len(c.streams)+c.reserved >= int(c.peerMaxStreams) {
		return false
	}
	c.reserved++
	return true
}

// Unreserve gives back a reservation that will not be used.
func (c *Conn) Unreserve() {
	c.mu.Lock()
	c.reserved--
	closeNow := c.goingAway && !c.closed && len(c.streams) == 0 && c.reserved == 0
	c.mu.Unlock()
	if closeNow {
		go c.closeGracefully()
	}
}

// Shutdown stops new streams and closes the connection once its open
// streams have ended. A server tells the peer at once with GOAWAY. A
// client stops reserving streams (Usable and Reserve turn false) but still
// opens those already reserved, and sends its GOAWAY just before it
// closes: a GOAWAY of ours makes the peer refuse every later stream, and a
// stream reserved before Shutdown must not fail for it.
func (c *Conn) Shutdown() {
	c.mu.Lock()
	if c.closed || c.goingAway {
		c.mu.Unlock()
		return
	}
	c.goingAway = true
	if !c.client && !c.started {
		// Run sends the GOAWAY after its SETTINGS (RFC 9113 section 3.4:
		// SETTINGS come first).
		c.mu.Unlock()
		return
	}
	last := c.lastPeerID
	idle := len(c.streams) == 0 && c.reserved == 0
	c.mu.Unlock()
	if !c.client {
		c.queue(func(fw *http2.Framer) error { return fw.WriteGoAway(last, http2.ErrCodeNo, nil) })
	}
	if idle {
		go c.closeGracefully()
	}
}

// closeGracefully ends a connection that is going away and has no stream
// left: a client sends its GOAWAY now; either side lets what is queued go
// out before the close.
func (c *Conn) closeGracefully() {
	if c.client {
		c.queue(func(fw *http2.Framer) error { return fw.WriteGoAway(0, http2.ErrCodeNo, nil) })
	}
	c.flushControl()
	if !c.client {
		// Streams the peer opened before it read our GOAWAY may still be
		// on the way. Stay a moment to refuse them (REFUSED_STREAM, which
		// the peer sends again elsewhere) instead of closing under them:
		// the peer could not tell that close from a failure, and data we
		// left unread would turn it into a reset that may take our GOAWAY
		// with it. A peer that heard the GOAWAY closes first.
		t := time.NewTimer(goAwayLinger)
		select {
		case <-c.done:
		case <-t.C:
		}
		t.Stop()
	}
	c.fail(ErrClosed)
}

// goAwayLinger is how long a server stays after its GOAWAY for the
// streams in flight towards it, as golang.org/x/net/http2's server does.
const goAwayLinger = time.Second

// Close ends the connection and every stream on it at once.
func (c *Conn) Close() error {
	c.fail(ErrClosed)
	return nil
}

// StreamCount is the number of open streams.
func (c *Conn) StreamCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams)
}

// fail ends the connection with err (the first error wins).
func (c *Conn) fail(err error) { c.stop(err, true) }

// stop ends the connection with err, and its streams; closeConn closes
// the socket too, which linger leaves open for a moment.
func (c *Conn) stop(err error, closeConn bool) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.err = err
	streams := make([]*Stream, 0, len(c.streams))
	for _, s := range c.streams {
		streams = append(streams, s)
	}
	close(c.done)
	c.cond.Broadcast()
	if c.calmTimer != nil {
		c.calmTimer.Stop()
	}
	c.mu.Unlock()
	if closeConn {
		c.nc.Close()
	}
	for _, s := range streams {
		s.abort(err, false)
	}
	if !errors.Is(err, ErrClosed) && !errors.Is(err, io.EOF) {
		c.cfg.Logger.Debug("tunnel connection ended", "remote", c.nc.RemoteAddr().String(), "err", err)
	}
}

// connError ends the connection after telling the peer why. The reader
// calls it, and lingers (see linger); others call goAway.
func (c *Conn) connError(code http2.ErrCode, err error) {
	c.goAway(code, err, true)
}

// goAway sends GOAWAY with code and ends the connection with err; with
// linger set (only the reader may) it lingers before closing.
func (c *Conn) goAway(code http2.ErrCode, err error, linger bool) {
	if !errors.As(err, new(floodError)) {
		countProtocolError(codeReason(code))
	}
	c.mu.Lock()
	last := c.lastPeerID
	c.mu.Unlock()
	c.queueFrame(func(fw *http2.Framer) error { return fw.WriteGoAway(last, code, []byte(err.Error())) }, true)
	c.flushControl()
	if !linger {
		c.fail(err)
		return
	}
	c.stop(err, false)
	c.linger()
}

// Lingering close, after a GOAWAY that ends the connection.
const (
	lingerTime  = time.Second
	lingerBytes = 1 << 20
)

// linger closes the socket after a GOAWAY as nginx's lingering close
// does: our side is shut for writing, and what the peer still sends is
// read and dropped until it closes too, for lingerTime or lingerBytes at
// most. Closing with unread bytes (the rest of an oversized frame, frames
// sent before the peer saw the GOAWAY) would make the kernel reset the
// connection, and the reset may destroy the GOAWAY before the peer has
// read it. Only the reader calls it: it is the socket's one reader.
func (c *Conn) linger() {
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	c.nc.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.Copy(io.Discard, io.LimitReader(c.nc, lingerBytes))
	c.nc.Close()
}

// keepAlive pings a silent peer and closes the connection when the peer
// stays silent, or when it has carried no stream for IdleTimeout.
func (c *Conn) keepAlive() {
	t := time.NewTicker(c.cfg.PingAfter)
	defer t.Stop()
	seen, pinged := c.frames.Load(), false
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		c.mu.Lock()
		idle := len(c.streams) == 0 && c.reserved == 0 && time.Since(c.idleSince) > c.cfg.IdleTimeout
		stale := c.staleStreamsLocked(time.Now())
		c.mu.Unlock()
		if idle {
			c.Shutdown()
		}
		for _, s := range stale {
			s.abort(errStreamIdle, true)
		}
		now := c.frames.Load()
		switch {
		case now != seen:
			seen, pinged = now, false
		case pinged:
			c.fail(fmt.Errorf("tunnel: peer %s silent for %s", c.nc.RemoteAddr(), 2*c.cfg.PingAfter))
			return
		default:
			pinged = true
			c.queue(func(fw *http2.Framer) error { return fw.WritePing(false, [8]byte{'t', 'r', 'e', 'l', 'l', 'i', 's'}) })
		}
	}
}

// errStreamIdle ends a stream idle for longer than its timeout.
var errStreamIdle = errors.New("tunnel: stream idle for longer than its idle timeout")

// staleStreamsLocked returns the streams on which no frame came or went
// for their idle timeout; keepAlive, their only watcher, calls it with mu
// held, every PingAfter.
func (c *Conn) staleStreamsLocked(now time.Time) []*Stream {
	var stale []*Stream
	for _, s := range c.streams {
		if a := s.activity.Load(); a != s.seen || s.quietSince.IsZero() {
			s.seen, s.quietSince = a, now
			continue
		}
		limit := c.cfg.StreamIdleTimeout
		if !s.request {
			limit = c.cfg.ConnectIdleTimeout
		}
		if now.Sub(s.quietSince) >= limit {
			stale = append(stale, s)
		}
	}
	return stale
}

// readLoop reads frames until the connection fails.
func (c *Conn) readLoop() {
	first := true
	for {
		f, err := c.fr.ReadFrame()
		var hb *headerBlock
		if hf, ok := f.(*http2.HeadersFrame); ok && err == nil {
			hb, err = c.hr.read(c.fr, hf)
		}
		if err != nil {
			var fe floodError
			if errors.As(err, &fe) {
				c.flooded(fe.kind, c.flood.counts[fe.kind], true)
				return
			}
			var se http2.StreamError
			if errors.As(err, &se) {
				c.streamError(se.StreamID, se.Code, "malformed_frame", se)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.connError(http2.ErrCode(ce), fmt.Errorf("tunnel: %w", err))
				return
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				// RFC 9113 section 4.2: a frame over the size we allow
				// is a connection error, told with GOAWAY.
				c.connError(http2.ErrCodeFrameSize, fmt.Errorf("tunnel: %w", err))
				return
			}
			if c.Err() == nil && !errors.Is(err, net.ErrClosed) {
				c.fail(fmt.Errorf("tunnel: read: %w", err))
			} else {
				c.fail(io.EOF)
			}
			return
		}
		c.frames.Add(1)
		if first {
			first = false
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				c.connError(http2.ErrCodeProtocol, errors.New("tunnel: first frame from peer is not SETTINGS"))
				return
			}
		}
		if k, ok := c.floodKind(f); ok && c.over(k) {
			switch {
			case c.calmed:
				continue // over budget again: dropped, not answered
			case !c.client:
				// The streams in flight may finish (calm); a client's
				// peer is one server, its streams ours, and it ends.
				if c.calm(k) {
					continue
				}
				return
			}
			c.flooded(k, c.flood.counts[k], true)
			return
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			err = c.onData(f)
		case *http2.HeadersFrame:
			err = c.onHeaders(hb)
		case *http2.WindowUpdateFrame:
			err = c.onWindowUpdate(f)
		case *http2.SettingsFrame:
			err = c.onSettings(f)
		case *http2.PingFrame:
			if !f.IsAck() {
				data := f.Data
				c.queue(func(fw *http2.Framer) error { return fw.WritePing(true, data) })
			}
		case *http2.RSTStreamFrame:
			err = c.onReset(f)
		case *http2.GoAwayFrame:
			if c.onGoAway(f) {
				// Nothing left in flight: close, lingering, so that
				// frames the peer sent behind its GOAWAY (a PING) do
				// not turn our close into a reset.
				c.flushControl()
				c.stop(io.EOF, false)
				c.linger()
				return
			}
		case *http2.PushPromiseFrame:
			err = http2.ConnectionError(http2.ErrCodeProtocol)
		case *http2.PriorityFrame:
			// Priorities carry nothing we use, but a stream that depends
			// on itself is an error (RFC 9113 section 5.3.1), even idle.
			if f.StreamDep == f.StreamID {
				c.streamError(f.StreamID, http2.ErrCodeProtocol, "self_dependency", errors.New("tunnel: PRIORITY makes a stream depend on itself"))
			}
		default:
			// Unknown frame types are ignored (RFC 9113 section 4.1).
		}
		if err != nil {
			code := http2.ErrCodeProtocol
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				code = http2.ErrCode(ce)
			}
			c.connError(code, fmt.Errorf("tunnel: %w", err))
			return
		}
	}
}

func (c *Conn) onData(f *http2.DataFrame) error {
	n := int64(f.Header().Length)
	if n > c.recvWindow {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWindow -= n
	// The connection window is returned at once: a stream's own window
	// bounds what it can hold, and a stalled stream must not stall the
	// others.
	c.recvUnacked += n
	if c.recvUnacked >= int64(c.cfg.ConnWindow/4) {
		inc := uint32(c.recvUnacked)
		c.recvWindow += c.recvUnacked
		c.recvUnacked = 0
		c.queue(func(fw *http2.Framer) error { return fw.WriteWindowUpdate(0, inc) })
	}
	id := f.Header().StreamID
	s, st := c.lookup(id)
	switch {
	case st == streamIdle:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	case st == streamClosed && c.client:
		// Past the streams we remember resetting (a burst of cancelled
		// requests), a response's frames in flight look the same:
		// ignored, so that a pooled connection is not disturbed.
	case st == streamClosed || s != nil && s.peerEnded():
		// RFC 9113 section 5.1: DATA on a stream the peer ended.
		c.streamError(id, http2.ErrCodeStreamClosed, "stream_closed", errors.New("tunnel: DATA on a closed stream"))
	case s != nil:
		if got := s.received.Load() + int64(len(f.Data())); s.declared >= 0 && (got > s.declared || f.StreamEnded() && got != s.declared) {
			// RFC 9113 section 8.1.1: the stream fails before the
			// bytes that break the declared length reach anyone.
			c.streamError(id, http2.ErrCodeProtocol, "content_length_mismatch", fmt.Errorf("tunnel: body of at least %d bytes, content-length %d", got, s.declared))
			return nil
		}
		s.deliver(f.Data(), f.StreamEnded(), n)
	}
	return nil
}

// What a frame's stream ID names (RFC 9113 section 5.1), for lookup.
const (
	streamOpen      = iota // a stream in the map: open or half-closed
	streamIdle             // never opened
	streamResetByUs        // closed by our RST_STREAM: its frames may be in flight
	streamClosed           // closed otherwise: the peer knows it is
)

// lookup returns the stream id names, if it is open, and its state.
func (c *Conn) lookup(id uint32) (*Stream, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.streams[id]; s != nil {
		return s, streamOpen
	}
	switch {
	case c.idle(id):
		return nil, streamIdle
	case c.resetByUs(id):
		return nil, streamResetByUs
	}
	return nil, streamClosed
}

// resetByUs reports whether we reset stream id lately; c.mu is held.
func (c *Conn) resetByUs(id uint32) bool {
	for _, r := range c.resets {
		if r == id {
			return true
		}
	}
	return false
}

// idle reports whether id names a stream never opened (RFC 9113 5.1).
func (c *Conn) idle(id uint32) bool {
	if c.client {
		return id >= c.nextID || id%2 == 0
	}
	return id > c.lastPeerID
}

func (c *Conn) onHeaders(b *headerBlock) error {
	id := b.streamID
	s, st := c.lookup(id)
	switch {
	case s != nil:
		return c.onLaterHeaders(s, b)
	case st == streamResetByUs:
		return nil // decoded, for HPACK's sake, and ignored
	case st == streamClosed && c.client:
		return nil // as for DATA (onData)
	case st == streamIdle && (c.client || id%2 == 0):
		// A server opens no streams here (no push).
		return http2.ConnectionError(http2.ErrCodeProtocol)
	case st == streamClosed:
		// A stream ID at or below the last one opened, and not one we
		// reset: the stream was closed, or skipped, which closes it
		// (RFC 9113 section 5.1.1). Its header block cannot be a new
		// request.
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	method, authority, path := b.pseudo(":method"), b.pseudo(":authority"), b.pseudo(":path")
	scheme := b.pseudo(":scheme")
	declared, malformed := int64(-1), b.malformed
	if malformed == nil {
		declared, malformed = checkRequest(b, method, scheme, path, authority)
	}
	var status int
	var reason string
	switch {
	case b.selfDependent, malformed != nil:
	case b.truncated:
		status, reason = 431, "request header fields too large"
	case method != "CONNECT" && !c.cfg.Requests:
		status, reason = 405, "only CONNECT to a named service is served here"
	}
	c.mu.Lock()
	c.lastPeerID = id
	refuse := c.goingAway || c.closed || len(c.streams) >= int(c.cfg.MaxStreams) || c.running.Load() >= 2*int32(c.cfg.MaxStreams)
	if b.selfDependent || malformed != nil || refuse || status != 0 {
		c.mu.Unlock()
		switch {
		case b.selfDependent:
			c.streamError(id, http2.ErrCodeProtocol, "self_dependency", errors.New("tunnel: HEADERS make a stream depend on itself"))
		case malformed != nil:
			c.streamError(id, http2.ErrCodeProtocol, "malformed_request", fmt.Errorf("tunnel: malformed request: %w", malformed))
		case refuse:
			c.sendReset(id, http2.ErrCodeRefusedStream)
		default:
			// Answer, then reset: the caller may still be sending a body.
			c.queue(func(fw *http2.Framer) error {
				return c.headersLocked(id, true, []hpack.HeaderField{
					{Name: ":status", Value: strconv.Itoa(status)},
					{Name: ReasonHeader, Value: reason}})
			})
			if !b.endStream {
				c.sendReset(id, http2.ErrCodeNo)
			}
		}
		return nil
	}
	s = c.newStreamLocked(id)
	s.declared = declared
	s.Authority = authority
	if method == "CONNECT" {
		if fields := b.regular(); len(fields) > 0 {
			s.Header = make(map[string]string, len(fields))
			for _, hf := range fields {
				s.Header[hf.Name] = hf.Value
			}
		}
	} else {
		s.Method, s.Scheme, s.Path = method, scheme, path
		s.Fields = b.regularCopy()
		s.request = true
		s.readable.L = &s.mu
	}
	c.mu.Unlock()
	if b.endStream {
		s.deliver(nil, true, 0)
	}
	c.running.Add(1)
	c.spawn(s)
	return nil
}

// serve runs the handler of a stream the peer opened, on a worker.
func (c *Conn) serve(s *Stream) {
	defer c.running.Add(-1)
	c.handler(s)
	// A handler that returned without ending its stream abandoned it.
	s.abort(errAbandoned, true)
}

// onLaterHeaders takes a header block on a stream already open: the
// response (client), or trailers, which must end the stream and carry no
// pseudo-header field (RFC 9113 section 8.1).
func (c *Conn) onLaterHeaders(s *Stream, b *headerBlock) error {
	recvEnd, sentEnd := s.endState()
	switch {
	case recvEnd && sentEnd:
		// Closed both ways, if not yet forgotten (RFC 9113 section 5.1).
		return http2.ConnectionError(http2.ErrCodeStreamClosed)
	case recvEnd:
		c.streamError(s.id, http2.ErrCodeStreamClosed, "stream_closed", errors.New("tunnel: HEADERS after the peer ended the stream"))
	case b.malformed != nil:
		c.streamError(s.id, http2.ErrCodeProtocol, "malformed_headers", fmt.Errorf("tunnel: malformed header block: %w", b.malformed))
	case b.selfDependent:
		c.streamError(s.id, http2.ErrCodeProtocol, "self_dependency", errors.New("tunnel: HEADERS make a stream depend on itself"))
	case c.client && !s.responded():
		s.onResponse(b)
	case !b.endStream || b.npseudo > 0:
		c.streamError(s.id, http2.ErrCodeProtocol, "malformed_trailers", errors.New("tunnel: trailers must end the stream and carry no pseudo-header field"))
	case s.declared >= 0 && s.received.Load() != s.declared:
		c.streamError(s.id, http2.ErrCodeProtocol, "content_length_mismatch", fmt.Errorf("tunnel: body of %d bytes, content-length %d", s.received.Load(), s.declared))
	default:
		s.onTrailers(b)
	}
	return nil
}

// checkRequest checks a request's header block as RFC 9113 section 8.3
// asks, and returns its declared content length (-1 if none).
func checkRequest(b *headerBlock, method, scheme, path, authority string) (int64, error) {
	protocol := b.pseudo(":protocol")
	switch {
	case method == "":
		return -1, errors.New("no :method")
	case protocol != "":
		// Extended CONNECT (RFC 8441) needs a setting we do not send.
		return -1, errors.New(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL")
	case method == "CONNECT":
		if authority == "" || path != "" || scheme != "" {
			return -1, errors.New("CONNECT needs :authority and no :scheme or :path")
		}
	case scheme == "" || path == "":
		return -1, errors.New("no :scheme or :path, or an empty one")
	case (scheme == "http" || scheme == "https") && path[0] != '/' && (path != "*" || method != "OPTIONS"):
		// An absolute :path could name another host than :authority.
		return -1, errors.New(":path is not an absolute path (origin form)")
	}
	declared := int64(-1)
	for _, hf := range b.regular() {
		if hf.Name != "content-length" {
			continue
		}
		n, err := strconv.ParseUint(hf.Value, 10, 63)
		if err != nil || declared >= 0 && int64(n) != declared {
			return -1, errors.New("invalid content-length, or several that differ")
		}
		declared = int64(n)
	}
	if declared > 0 && b.endStream {
		return -1, errors.New("content-length of a body that is not there")
	}
	return declared, nil
}

// newStreamLocked registers a stream; c.mu must be held.
func (c *Conn) newStreamLocked(id uint32) *Stream {
	s := &Stream{
		c:          c,
		id:         id,
		sendWindow: c.peerWindow,
		recvWindow: int64(c.cfg.InitialStreamWindow),
		window:     int64(c.cfg.InitialStreamWindow),
		declared:   -1,
	}
	if c.client {
		s.resp = make(chan struct{}, 1)
	}
	c.streams[id] = s
	c.open.Add(1)
	return s
}

// forget removes a stream that has ended; the connection closes if it was
// the last one and the connection is going away.
func (c *Conn) forget(s *Stream) {
	c.mu.Lock()
	if c.streams[s.id] != s {
		c.mu.Unlock()
		return
	}
	delete(c.streams, s.id)
	c.open.Add(-1)
	c.cond.Broadcast()
	last := len(c.streams) == 0
	if last {
		c.idleSince = time.Now()
	}
	closeNow := last && c.goingAway && !c.closed && c.reserved == 0
	c.mu.Unlock()
	if closeNow {
		go c.closeGracefully()
	}
}

func (c *Conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	id := f.Header().StreamID
	c.mu.Lock()
	if id == 0 {
		defer c.mu.Unlock()
		if c.sendWindow+inc > maxWindow {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.sendWindow += inc
		c.cond.Broadcast()
		return nil
	}
	s := c.streams[id]
	switch {
	case s == nil && c.idle(id):
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	case s == nil:
		c.mu.Unlock()
		return nil // a closed stream's, which may be in flight
	case s.sendWindow+inc > maxWindow:
		c.mu.Unlock()
		c.streamError(id, http2.ErrCodeFlowControl, "stream_window_overflow", errors.New("tunnel: stream window overflow"))
		return nil
	}
	s.sendWindow += inc
	c.cond.Broadcast()
	c.mu.Unlock()
	return nil
}

func (c *Conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	var tableSize uint32
	tableSizeSet := false
	c.mu.Lock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - c.peerWindow
			c.peerWindow = int64(st.Val)
			for _, s := range c.streams {
				s.sendWindow += delta
				if s.sendWindow > maxWindow {
					// RFC 9113 section 6.9.2.
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
		case http2.SettingHeaderTableSize:
			tableSize = st.Val
			tableSizeSet = true
		case http2.SettingMaxFrameSize:
			c.peerFrame = int(st.Val)
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = st.Val
		}
		return nil
	})
	c.cond.Broadcast()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	c.queue(func(fw *http2.Framer) error {
		if tableSizeSet {
			// The peer's decoder table: our encoder must fit it, and
			// say so at the start of its next block (RFC 7541 section
			// 4.2). Set here, under omu, so that no block encoded for
			// the old size follows the acknowledgement.
			c.henc.SetMaxDynamicTableSizeLimit(tableSize)
		}
		return fw.WriteSettingsAck()
	})
	return nil
}

// floodKind says which flood budget a frame counts against; a frame that
// carries work counts towards the work instead, and gives false.
func (c *Conn) floodKind(f http2.Frame) (floodKind, bool) {
	switch f := f.(type) {
	case *http2.DataFrame:
		// An empty DATA frame that ends its stream is legitimate once per
		// stream, and every stream earns a unit of work with its HEADERS;
		// sent again and again on a closed stream, it is a flood too.
		if len(f.Data()) == 0 {
			return floodEmptyData, true
		}
		c.flood.work++
	case *http2.HeadersFrame:
		c.flood.work++
	case *http2.WindowUpdateFrame:
		return floodWindowUpdate, true
	case *http2.SettingsFrame:
		return floodSettings, true
	case *http2.PingFrame:
		return floodPing, true
	case *http2.PriorityFrame:
		return floodPriority, true
	case *http2.RSTStreamFrame:
		// Only a server pays a handler for each stream opened and reset;
		// a client's peer may reset each stream it was sent once.
		switch {
		case c.client:
			return floodClientReset, true
		case c.cfg.PeerIsProxy:
			return 0, false // see Config.PeerIsProxy
		}
		return floodReset, true
	case *http2.UnknownFrame:
		return floodUnknown, true
	}
	return 0, false
}

func (c *Conn) onReset(f *http2.RSTStreamFrame) error {
	s, st := c.lookup(f.Header().StreamID)
	if st == streamIdle {
		// RFC 9113 section 6.4.
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if s == nil {
		return nil
	}
	var err error = ResetError{Code: f.ErrCode}
	if f.ErrCode == http2.ErrCodeRefusedStream {
		err = errRefused
	}
	s.abort(err, false)
	return nil
}

// onGoAway takes the peer's GOAWAY; it reports whether nothing is left in
// flight, so the connection is to close now.
func (c *Conn) onGoAway(f *http2.GoAwayFrame) bool {
	c.mu.Lock()
	c.goingAway = true
	c.peerAway = true
	var refused []*Stream
	if c.client {
		for id, s := range c.streams {
			if id > f.LastStreamID {
				refused = append(refused, s)
			}
		}
	}
	closeNow := len(c.streams) == len(refused)
	c.mu.Unlock()
	for _, s := range refused {
		s.abort(errRefused, false)
	}
	if f.ErrCode != http2.ErrCodeNo {
		c.cfg.Logger.Debug("peer ended tunnel connection", "remote", c.nc.RemoteAddr().String(), "code", f.ErrCode.String(), "debug", string(f.DebugData()))
	}
	return closeNow
}

// resetStream ends stream id and tells the peer.
func (c *Conn) resetStream(id uint32, code http2.ErrCode, err error) {
	c.mu.Lock()
	s := c.streams[id]
	c.mu.Unlock()
	if s != nil {
		s.abort(err, false)
	}
	c.sendReset(id, code)
}

// sendReset sends RST_STREAM for id, and remembers that we reset it: the
// peer's frames on it may still be in flight, and are ignored (RFC 9113
// section 5.1), while frames on a stream the peer itself ended are an
// error.
func (c *Conn) sendReset(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	c.resets[c.nextReset] = id
	c.nextReset = (c.nextReset + 1) % len(c.resets)
	c.mu.Unlock()
	c.queue(func(fw *http2.Framer) error { return fw.WriteRSTStream(id, code) })
}

// streamError resets stream id because the peer broke the protocol on it
// (a stream error, RFC 9113 section 5.4.2), and counts and logs why under
// reason. The connection goes on.
func (c *Conn) streamError(id uint32, code http2.ErrCode, reason string, err error) {
	countProtocolError(reason)
	logProtocol(c.cfg.Logger, "HTTP/2 peer broke the protocol on a stream; reset it",
		slog.String("remote", c.nc.RemoteAddr().String()),
		slog.String("local", c.nc.LocalAddr().String()),
		slog.String("reason", reason),
		slog.Uint64("stream", uint64(id)),
		slog.String("code", code.String()),
		slog.String("detail", err.Error()))
	c.resetStream(id, code, err)
}

// ResetError is the end of a stream that the peer reset.
type ResetError struct{ Code http2.ErrCode }

func (e ResetError) Error() string { return "tunnel: stream reset by peer: " + e.Code.String() }
