package l7

import (
	"log/slog"
	"net/http"

	"github.com/trellis-mesh/trellis/internal/proxy/h1"
)

// Server serves the connections of clients outside the tunnel (an
// upstream listener, a gateway listener): package h1's HTTP/1.1 and
// HTTP/2 server, with l7's hooks as NewServer sets them.
type Server = h1.Server

// NewServer returns the server for an Outbound's or a gateway's listener,
// with the request head limits. The request streams of its HTTP/2 clients
// become requests as a caller sidecar's do on the inbound (serveRequest),
// with as large a header list as a tunnel takes; and the fields the
// proxies set are refused as trailers, as sanitize refuses them in a head
// it did not check.
func NewServer(h http.Handler, log *slog.Logger) *Server {
	s := h1.NewServer(h, log)
	s.ServeStream = serveRequest
	if o, ok := h.(*Outbound); ok {
		s.ServeStreamDirect = o.ServeStream
		if !o.httpOnly {
			s.ServeHead = o.ServeHead
		}
	}
	s.H2MaxHeaderBytes = TunnelHeaderBytes
	s.ForbidTrailer = meshTrailer
	return s
}
