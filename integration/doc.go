// Package integration holds Trellis's end-to-end tests: they build the real
// trellis binary and run control plane servers and sidecar proxies as
// processes on loopback, with real apps behind them, and kill, restart and
// reconfigure them as an operator (or a failure) would. They use Linux
// process groups and network namespaces, so they build on Linux only.
package integration
