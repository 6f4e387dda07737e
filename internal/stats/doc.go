// Package stats is the mesh's traffic summaries: the small, bounded
// Summary every proxy and gateway sends the control plane on its stream
// (counts by status class, latency buckets, bytes, connections, retries
// and denials, per source, destination, route and version), its decoding
// and validation, and the Ring a server keeps them in: the last 15
// minutes, aggregated per interval, from which the /v1/stats and
// /v1/topology figures are computed; and the Push servers send each
// other, their own slots, which a peer's Ring merges by origin and slot
// (peer.go). Nothing here runs per request: a proxy builds a summary
// from the counters it already keeps.
package stats
