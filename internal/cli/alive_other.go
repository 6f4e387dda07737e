//go:build !unix

package cli

// processAlive cannot tell here: the process is taken to run.
func processAlive(int) bool { return true }
