// Package meshdns answers the mesh's DNS names: a Resolver for a
// sidecar's own app (its upstreams at virtual IPs or at their local
// listeners, NXDOMAIN for the other mesh names, every other name forwarded
// to the host's resolver) and an Authority for callers outside the mesh
// (the healthy instances' edge listeners, or the gateway that serves a
// name; REFUSED for anything outside the mesh's domains).
//
// Both serve UDP and TCP through miekg/dns and share one front (guard.go):
// only QUERY with one question of class IN, EDNS0 with a 1232-byte UDP
// size, truncation to what the client can take, names matched in
// lowercase and answered in the question's case, a per-client rate limit,
// and a count of queries by result.
//
// Concurrency: miekg/dns runs each UDP query and each TCP connection on a
// goroutine of its own, owned by Serve, which waits for them. The answers'
// data is one immutable zone behind an atomic pointer, swapped whole when
// the mesh changes; forwards in flight are bounded by a semaphore and each
// by a timeout.
package meshdns
