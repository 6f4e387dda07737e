// Package l4 carries TCP connections between sidecars. On the wire between
// two sidecars there is one mTLS connection (TLS 1.3, ALPN "trellis/h2")
// speaking HTTP/2; each client connection is one CONNECT stream on it, as
// Istio's HBONE does. The outbound side keeps a small pool of these
// connections per endpoint, so a new client connection costs a stream rather
// than a handshake; the inbound side authorizes every stream against the
// peer's verified identity before dialing the local app. A Guard keeps
// both sides' connections within the trust that admitted them: it
// re-verifies their peers when the trust bundle changes and retires each
// connection before the certificates it was made with expire.
package l4
