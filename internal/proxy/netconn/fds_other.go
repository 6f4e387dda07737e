//go:build !linux

package netconn

// DescriptorLimit returns 0: the limit is read on Linux only.
func DescriptorLimit() int { return 0 }

// countDescriptors returns -1: not known on this system.
func countDescriptors() (int, error) { return -1, nil }
