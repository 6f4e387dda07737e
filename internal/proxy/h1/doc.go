// Package h1 is Trellis's own HTTP/1.1 machinery: the server of the
// listeners that face clients outside the tunnel (a sidecar's upstream
// listener, a gateway's listener), its strict request reader and its
// response writer, and the client that sends requests to the local app. It speaks the protocol and nothing more; what a
// request means (routing, retries, identities, authorization, the mesh's
// own header fields) is its user's, package l7, which imports h1 and
// never the other way round.
//
// What it provides:
//   - Server (NewServer, Serve, ServeConn, RunConn, Shutdown, Close): an
//     HTTP/1.1 loop per connection, and HTTP/2 clients (h2c with prior
//     knowledge, or TLS with ALPN h2) served by the tunnel's server, whose
//     request streams the ServeStream hook turns into requests. Its knobs
//     are fields set before Serve: BodyReadTimeout, the Rejected counter
//     (the reader's refusals by reason), HandshakeLog, ForbidTrailer,
//     H2MaxHeaderBytes.
//   - ReadRequest: the reader (reader.go), which refuses whatever two
//     HTTP/1.1 parsers could read two ways, with a *ProtocolError naming
//     the status and the reason; a request it accepts, net/http reads the
//     same way (l7's differential fuzz test checks it).
//   - Abort and Aborter: how a handler ends a response as failed on any
//     ResponseWriter that supports it (this package's, l7's stream
//     writer), and StatusLine, the "200 OK" text of a status.
//   - Client: an http.RoundTripper to one address (the local app) over
//     kept HTTP/1.1 connections, without http.Transport's goroutines;
//     RoundTripFields gives a proxy the usual response's head as HTTP/2
//     fields (Response) instead of an http.Header.
//   - HeadFieldsWriter: the server's ResponseWriter also takes a head as
//     such fields (SetHeadFields), which a proxy relays as they came.
//   - A request body of Server has a Failure method (*ProtocolError, or
//     nil): a proxy tells by it a request that failed by the client's
//     doing (malformed framing, a stall, a client gone) from an upstream's
//     failure.
//
// What it must not know: routes, services, identities, authorization,
// the control plane. The hooks are the boundary: l7.NewServer sets
// ServeStream (l7's request-stream glue), H2MaxHeaderBytes (the tunnel's
// header list size) and ForbidTrailer (the mesh's own fields, which may
// not arrive as trailers). The architecture test pins the imports: the
// standard library, x/net, prometheus, and of Trellis only
// proxy/netconn, proxy/handshake, proxy/tunnel and ratelog.
//
// Concurrency: each connection is served by one goroutine (ServeConn
// starts it, RunConn is it), which owns the connection's reader, writer
// and response writer; a handler may read the request body on another
// goroutine, so requestBody and the "100 Continue" it sends take their own
// locks: responseWriter.mu may be held while requestBody.mu is taken
// (writing the head asks the body's Failure), never the reverse (a body
// read releases its lock before it sends "100 Continue"). Server.mu guards the
// listener and connection sets; closing is set under it and read without
// it. An HTTP/2 connection's goroutines are the tunnel's (see package
// tunnel).
package h1
