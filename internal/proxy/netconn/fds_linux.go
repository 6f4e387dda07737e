package netconn

import (
	"os"
	"syscall"
)

// DescriptorLimit returns the process's RLIMIT_NOFILE soft limit, or 0 if
// it cannot be read. (Go raises the soft limit to the hard one at start.)
func DescriptorLimit() int {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur > 1<<30 {
		return 0
	}
	return int(r.Cur)
}

// countDescriptors returns the number of descriptors the process has
// open, from /proc/self/fd (less the one the listing itself holds).
func countDescriptors() (int, error) {
	f, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	for {
		names, err := f.Readdirnames(1024)
		n += len(names)
		if err != nil || len(names) == 0 {
			break
		}
	}
	return n - 1, nil
}
