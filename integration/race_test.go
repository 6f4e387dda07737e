//go:build race && linux

package integration

// raceEnabled builds the binary under test with the race detector when the
// tests themselves run with it, so that races in the server and proxies fail
// the end-to-end suite too.
const raceEnabled = true
