// Package certs holds a workload's certificate and trust bundle and builds
// TLS configurations from them. Both are swapped atomically, so a renewed
// certificate or a new bundle applies to the next handshake without touching
// open connections. Peer certificates are verified as X509-SVIDs to the
// letter of the SPIFFE standard (VerifySPIFFE, VerifySVID): chained to the
// bundle, the ID read from the leaf's signed bytes, the key usages and
// extended key usages of a leaf, and no signing certificate carrying an ID
// with a path. Every TLS configuration here that accepts a mesh peer goes
// through them; the differential test against go-spiffe lists where
// Trellis is stricter.
package certs
