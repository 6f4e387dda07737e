// Package tunnel carries TCP connections between sidecars as HTTP/2 CONNECT
// streams over one multiplexed connection (the HBONE pattern).
//
// It speaks plain HTTP/2 on the wire (RFC 9113 framing and flow control,
// HPACK headers, CONNECT as in RFC 9113 section 8.5), so any HTTP/2 peer can
// talk to it, but it is built for one job, which the general-purpose
// golang.org/x/net/http2 client and server pay for on every byte: moving
// bytes between a socket and a stream with no goroutine in between. The
// frame reader writes DATA straight to the local socket with a non-blocking
// write and falls back to a per-stream flusher only when that socket is
// full; the goroutine reading the local socket writes each DATA frame
// straight to the connection. A stream costs one goroutine on each side.
//
// The reader never blocks on a write: frames it must send (acknowledgements,
// window updates, resets) go through a queue that a small writer drains. So
// two sidecars that both fill their send buffers still read each other, and
// flow control, not TCP, is what stops a fast sender.
package tunnel

// Concurrency
//
// This is the contract every change to the package keeps; the interleaving
// tests (interleave_test.go, run under -race -count=200 in CI) and the
// fuzz targets check it.
//
// Goroutines of a connection, each with its owner:
//
//   - the reader (readLoop): Run's own goroutine on a server, one NewClient
//     starts on a client. The only goroutine that reads the socket. It
//     never blocks on a stream or on the socket's write side: frames it
//     owes go through queue, deliveries that would block go to a flusher,
//     a stream's opener gets its answer without waiting (Stream.answer).
//     It ends when the connection fails; on a connection error it lingers
//     (Conn.linger) before closing the socket.
//   - the writer (writer): started with the reader; writes out what queue
//     leaves when no other goroutine is writing. Ends with done.
//   - keepAlive: started with the reader; pings a silent peer, shuts an
//     idle connection, resets idle streams. Ends with done.
//   - handlers (server): one per stream the peer opens, on the
//     connection's workers (workers.go). Run waits for every worker before
//     it returns, so nothing a server connection started outlives Run.
//   - a flusher per stream (Stream.flush) while the stream's local socket
//     is full; ends when pending is written or the stream stops (abort
//     closes the sink, which ends its write).
//   - timers: a stream's half-close timer and a calmed connection's grace
//     timer run abort or fail; both are stopped when the stream or the
//     connection ends.
//   - closeGracefully, started by the last stream to end on a connection
//     that is going away; ends with the connection.
//
// Locks, and what each guards:
//
//   - Conn.omu: the output: out, spare, writing, werr, ctrlQueued,
//     calming, deadlineSet, the writing framer fw and the HPACK encoder
//     henc/hbuf (so header blocks are encoded in the order they are sent),
//     and the order of stream IDs a client opens (openLocked).
//   - Conn.mu: the stream map and everything about the connection's state
//     and windows: streams, nextID, lastPeerID, reserved, peerMaxStreams,
//     peerWindow, peerFrame, sendWindow, each Stream.sendWindow, goingAway,
//     peerAway, started, resets, closed, err, idleSince, calmTimer, and the
//     keepAlive bookkeeping of each stream (seen, quietSince).
//   - Stream.mu: the rest of a stream: st (its state, state.go), sink,
//     pending, spare, flushing, gotResp, recvFinished, err, recvWindow,
//     window, unacked, halfTimer, recvDone, roff, trailers, onStop; the
//     readable condition waits on it.
//   - The reader alone (no lock): fr, hr, recvWindow/recvUnacked of the
//     connection, flood, calmed. Atomics: frames, sentWork, open, running,
//     finalFlush, and per stream stopped, received, activity.
//
// Lock order: Conn.omu, then Conn.mu, then Stream.mu. A header block is
// encoded under omu and reads the peer's frame size under mu; a stream's
// END_STREAM is recorded under its mu inside omu (Stream.markSentEnd). No
// goroutine takes omu while it holds mu or a Stream.mu, and none takes mu
// while it holds a Stream.mu: a stream that must reach the connection
// (forget, sendReset, sendUpdate) releases its own lock first. Nothing
// blocking (a socket write, a channel send, Cond.Wait on another lock) is
// done with mu or a Stream.mu held, except Cond.Wait on the lock's own
// condition (c.cond for windows, s.readable for data).
