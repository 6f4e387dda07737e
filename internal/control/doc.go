// Package control is the control plane role (`trellis server`). It wires the
// store, the CA and the token checks into an HTTPS API for the CLI and an
// xDS-style gRPC stream for proxies: it mirrors the store in memory through a
// watch, computes each connected proxy's snapshot with topology, pushes it
// when it changes and records which version the proxy acknowledged.
// Registrations live under a lease kept alive by the proxy's stream. It
// also serves the dashboard's pages (package dashboard) under /ui/, with
// sessions made from admin or viewer tokens (session.go), and the traffic
// figures of /v1/stats and /v1/topology from the summaries proxies send on
// their stream, kept in memory (stats.go, package stats). Servers on one
// store push each other their own proxies' summaries, authenticated by
// their serving certificates, so that any one answers for the whole mesh
// (peer.go).
package control
