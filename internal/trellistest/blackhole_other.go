//go:build !linux

package trellistest

import "testing"

// BlackHole returns an address where a TCP connect hangs; it is made
// with Linux's listen backlog, so elsewhere the test is skipped.
func BlackHole(t testing.TB) string {
	t.Skip("a black-hole address needs Linux")
	return ""
}
