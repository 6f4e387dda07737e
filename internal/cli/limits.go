package cli

import "github.com/trellis-mesh/trellis/internal/sidecar"

// limitFlags are the connection limits of a proxy or gateway; apply sets
// those given on the command line (a config file may set the others).
func limitFlags(fs *flagSet) (apply func(l *sidecar.Limits, set map[string]bool)) {
	perListener := fs.Int("max-connections-per-listener", 0, "connections open at once on each listener; one over it is closed at once (default 10000; -1: none)")
	process := fs.Int("max-connections", 0, "connections open at once across every listener (default: half of the descriptor limit, less a reserve; -1: none)")
	high := fs.Int("fd-high-water", 0, "refuse new connections while this many file descriptors are in use (default 90% of the descriptor limit; -1: off)")
	return func(l *sidecar.Limits, set map[string]bool) {
		if set["max-connections-per-listener"] {
			l.MaxConnectionsPerListener = *perListener
		}
		if set["max-connections"] {
			l.MaxConnections = *process
		}
		if set["fd-high-water"] {
			l.FDHighWater = *high
		}
	}
}
