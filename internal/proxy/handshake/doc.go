// Package handshake reports failed TLS handshakes of the proxies'
// listeners (the sidecar's public mTLS port, the edge listener, a
// gateway's HTTPS listeners): one info line per failure naming the peer's
// address, the SNI and ALPN where the handshake got that far, the identity
// the peer's certificate claimed, and the reason. Lines are rate-limited,
// so that a flood of bad handshakes cannot flood the log: past the limit
// they are counted, and the count goes with the next line logged.
package handshake
