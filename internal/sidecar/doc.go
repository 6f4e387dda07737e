// Package sidecar is the proxy role (`trellis proxy`): it makes its key,
// obtains its SVID from the control plane, registers its app's instance,
// health-checks the app, serves the inbound mTLS listener and one outbound
// listener per upstream (and in transparent mode the two listeners that
// redirect rules send traffic to), and applies the snapshots the control plane
// pushes. It keeps serving with its last snapshot and certificate when the
// control plane is unreachable, and persists both so that a restart during
// an outage still serves. Every few seconds it sends the control plane a
// summary of its traffic, read from its own counters (summary.go).
package sidecar
