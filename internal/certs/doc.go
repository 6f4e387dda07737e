// Package certs holds a workload's certificate and trust bundle and builds
// TLS configurations from them. Both are swapped atomically, so a renewed
// certificate or a new bundle applies to the next handshake without touching
// open connections. Peer certificates are verified as X509-SVIDs: chained to
// the bundle and shaped exactly as the SPIFFE standard allows.
package certs
