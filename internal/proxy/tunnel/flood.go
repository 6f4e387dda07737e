package tunnel

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/trellis-mesh/trellis/internal/ratelog"
)

// Flood protection. Frames that carry no work (SETTINGS, PING, empty
// DATA, empty CONTINUATION, WINDOW_UPDATE, PRIORITY, RST_STREAM, unknown
// types) cost the reader a parse, often a lock, and sometimes a frame back
// (an ACK); a peer that sends them by the hundred thousand keeps a core
// busy and, if it does not read, grows our output. Each kind has a budget
// per connection per second: a fixed allowance plus an allowance for each
// unit of real work (a HEADERS or non-empty DATA frame read, a HEADERS or
// DATA frame sent) in this second and the one before, so a busy pooled
// connection earns the WINDOW_UPDATEs and PINGs that its traffic brings
// about, while an idle one may send only the fixed allowance. A peer over
// a budget gets GOAWAY ENHANCE_YOUR_CALM and the connection ends.

// floodKind names what a peer flooded; its string is the metric's reason.
type floodKind int

const (
	floodSettings floodKind = iota
	floodPing
	floodEmptyData
	floodEmptyContinuation
	floodWindowUpdate
	floodPriority
	floodUnknown
	floodReset
	floodClientReset
	floodControlQueue
	nFloodKinds
)

var floodReasons = [nFloodKinds]string{
	floodSettings:          "settings_flood",
	floodPing:              "ping_flood",
	floodEmptyData:         "empty_data_flood",
	floodEmptyContinuation: "empty_continuation_flood",
	floodWindowUpdate:      "window_update_flood",
	floodPriority:          "priority_flood",
	floodUnknown:           "unknown_frame_flood",
	floodReset:             "rapid_reset",
	floodClientReset:       "reset_flood",
	floodControlQueue:      "control_queue_full",
}

func (k floodKind) String() string { return floodReasons[k] }

// floodBudgets: frames of each kind a peer may send in one second, base
// plus perWork for each unit of work in this second and the one before.
var floodBudgets = [nFloodKinds]struct{ base, perWork int64 }{
	// No peer needs to change its settings more than a few times; each
	// SETTINGS costs an ACK and, for INITIAL_WINDOW_SIZE, a walk over
	// every stream, so the budget does not grow with work.
	floodSettings: {100, 0},
	// Peers that estimate bandwidth (gRPC's BDP pings) ping about once
	// per burst of DATA they receive.
	floodPing: {100, 1},
	// An empty DATA frame (one that ends a stream: once per stream), or an
	// empty CONTINUATION without END_HEADERS, moves nothing; a peer may
	// send one now and then, not more than one per unit of work.
	floodEmptyData:         {100, 1},
	floodEmptyContinuation: {100, 1},
	// A reader returns window for each DATA frame it took: one update for
	// the stream and one for the connection, and a few when a stream
	// opens.
	floodWindowUpdate: {1000, 4},
	// Browsers send a few PRIORITY frames per stream and some at start.
	floodPriority: {100, 4},
	floodUnknown:  {100, 1},
	// Streams opened and reset (CVE-2023-44487): each costs a handler
	// and a dial of the app even though the reset frees its slot. The
	// budget is absolute: a reset stream is work the peer made us start
	// and abandoned, not work done.
	floodReset: {maxResetsPerSecond, 0},
	// On a client connection the peer may reset each stream we open once
	// (refusing it, or failing it); a flood of resets beyond that, on
	// streams long gone, only costs us the reading.
	floodClientReset: {maxResetsPerSecond, 1},
}

// maxQueuedControl bounds the frames the reader has queued (ACKs, window
// updates, resets) that are not yet written: a peer that makes us answer
// but does not read is cut off at this many, as golang.org/x/net/http2's
// server does. A variable for tests.
var maxQueuedControl = 10000

// floodGuard counts a connection's frames per kind in the current second.
// The reader owns it.
type floodGuard struct {
	since    time.Time
	counts   [nFloodKinds]int64
	work     int64 // read work since since; sent work is in Conn.sentWork
	sentBase int64 // Conn.sentWork at since
	prevWork int64 // all work in the second before
}

// over counts one frame of kind k and reports whether the peer went over
// its budget for the second. The clock is read once per counted frame;
// DATA with a payload and HEADERS only add to the work.
func (c *Conn) over(k floodKind) bool {
	g := &c.flood
	if now := time.Now(); now.Sub(g.since) >= time.Second || now.Before(g.since) {
		sent := c.sentWork.Load()
		work := g.work + sent - g.sentBase
		if now.Sub(g.since) >= 2*time.Second {
			work = 0 // the last second was idle
		}
		*g = floodGuard{since: now, sentBase: sent, prevWork: work}
	}
	g.counts[k]++
	b := floodBudgets[k]
	if g.counts[k] <= b.base {
		return false
	}
	work := g.prevWork + g.work + c.sentWork.Load() - g.sentBase
	return g.counts[k] > b.base+b.perWork*work
}

// floodError is what the reader ends a connection with when the peer
// floods it.
type floodError struct {
	kind   floodKind
	frames int64 // of the kind, in the second
}

func (e floodError) Error() string {
	return fmt.Sprintf("tunnel: peer flooded the connection (%s: %d frames in a second)", e.kind, e.frames)
}

// flooded ends the connection with GOAWAY ENHANCE_YOUR_CALM, counts it and
// logs it; frames is how many of kind k the peer sent (or made us queue).
// linger is set when the reader calls it (see Conn.linger).
func (c *Conn) flooded(k floodKind, frames int64, linger bool) {
	err := floodError{kind: k, frames: frames}
	countProtocolError(k.String())
	logProtocol(c.cfg.Logger, "HTTP/2 peer flooded the connection; sent GOAWAY ENHANCE_YOUR_CALM",
		slog.String("remote", c.nc.RemoteAddr().String()),
		slog.String("local", c.nc.LocalAddr().String()),
		slog.String("reason", k.String()),
		slog.Int64("frames", err.frames))
	c.goAway(http2.ErrCodeEnhanceYourCalm, err, linger)
}

// calmGrace is how long the streams in flight on a server connection
// whose peer flooded it may take to finish after its GOAWAY. A variable
// for tests.
var calmGrace = 5 * time.Second

// calm answers a flood on a server connection: GOAWAY ENHANCE_YOUR_CALM
// naming the last stream taken, no new stream, and the streams in flight
// let finish for calmGrace, as a graceful shutdown would. The peer may be
// a proxy (a gateway, a sidecar) carrying other clients' requests beside
// the flooder's, which must not fail for it. Meanwhile frames over a
// budget are dropped unanswered. It reports whether the connection goes
// on (false: it had nothing in flight, and ended). The reader calls it.
func (c *Conn) calm(k floodKind) bool {
	err := floodError{kind: k, frames: c.flood.counts[k]}
	countProtocolError(k.String())
	logProtocol(c.cfg.Logger, "HTTP/2 peer flooded the connection; sent GOAWAY ENHANCE_YOUR_CALM",
		slog.String("remote", c.nc.RemoteAddr().String()),
		slog.String("local", c.nc.LocalAddr().String()),
		slog.String("reason", k.String()),
		slog.Int64("frames", err.frames))
	c.mu.Lock()
	c.goingAway = true
	last, idle := c.lastPeerID, len(c.streams) == 0
	if !idle && !c.closed {
		c.calmTimer = time.AfterFunc(calmGrace, func() { c.fail(err) })
	}
	c.mu.Unlock()
	c.calmed = true
	if idle {
		c.goAway(http2.ErrCodeEnhanceYourCalm, err, true)
		return false
	}
	c.queueFrame(func(fw *http2.Framer) error {
		return fw.WriteGoAway(last, http2.ErrCodeEnhanceYourCalm, []byte(err.Error()))
	}, true)
	return true
}

// protocolErrors counts the HTTP/2 connections this process ended because
// the peer broke the protocol or flooded it, by reason: a flood's name
// (settings_flood, ping_flood, empty_data_flood, empty_continuation_flood,
// window_update_flood, priority_flood, unknown_frame_flood, rapid_reset,
// reset_flood, control_queue_full) or the error code sent in the GOAWAY
// (protocol_error, flow_control_error, frame_size_error, ...). One count
// for every tunnel connection in the process; whoever serves metrics
// exports ProtocolErrorCounts (the sidecar as
// trellis_http2_protocol_errors_total). Plain counters keep this package
// a leaf.
var protocolErrors struct {
	mu sync.Mutex
	n  map[string]uint64
}

func countProtocolError(reason string) {
	protocolErrors.mu.Lock()
	if protocolErrors.n == nil {
		protocolErrors.n = map[string]uint64{}
	}
	protocolErrors.n[reason]++
	protocolErrors.mu.Unlock()
}

// ProtocolErrorCounts returns the counts so far, by reason.
func ProtocolErrorCounts() map[string]uint64 {
	protocolErrors.mu.Lock()
	defer protocolErrors.mu.Unlock()
	return maps.Clone(protocolErrors.n)
}

// ProtocolErrorCount returns the count so far of one reason.
func ProtocolErrorCount(reason string) uint64 {
	protocolErrors.mu.Lock()
	defer protocolErrors.mu.Unlock()
	return protocolErrors.n[reason]
}

// codeReason is the metric reason of a connection error sent with code.
func codeReason(code http2.ErrCode) string {
	return strings.ToLower(code.String())
}

// protocolLog bounds the info lines about floods and protocol errors for
// the whole process: an attacker opening connection after connection must
// not flood the log instead. Every one is still counted.
var protocolLog ratelog.Limit

// protocolLinesPerSecond is protocolLog's budget.
const protocolLinesPerSecond = 10

// logProtocol writes one line if the budget allows, with how many were
// held back before it.
func logProtocol(lg *slog.Logger, msg string, attrs ...slog.Attr) {
	n, ok := protocolLog.Take(time.Now(), protocolLinesPerSecond)
	if !ok {
		return
	}
	if n > 0 {
		attrs = append(attrs, slog.Int("suppressed", n))
	}
	lg.LogAttrs(context.Background(), slog.LevelInfo, msg, attrs...)
}
