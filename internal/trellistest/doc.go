// Package trellistest holds helpers for tests: an in-process CA that issues
// real SVIDs, free loopback ports, an address whose connects hang, and
// polling with deadlines, an OTLP trace receiver.
package trellistest
