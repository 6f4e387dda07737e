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
