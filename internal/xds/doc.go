// Package xds is the wire between control plane and proxies: the xDS
// aggregated discovery stream (ADS) of Envoy's go-control-plane, with its
// versions, nonces and ACK/NACK, carrying Trellis's own snapshot type. A
// proxy announces its registration in the request's Node; the server answers
// with snapshots. Using the standard transport means standard Envoy resources
// can later be served by the same machinery.
package xds
