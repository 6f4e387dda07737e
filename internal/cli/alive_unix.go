//go:build unix

package cli

import "syscall"

// processAlive reports whether pid names a running process (signal 0
// checks without sending; EPERM means it runs as another user).
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}
