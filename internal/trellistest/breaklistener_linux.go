package trellistest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// BreakListener makes the TCP listener on port of process pid fail the
// way a listening socket fails under its owner, without the owner closing
// it: it shuts the socket down (shutdown(2)), after which the owner's
// accept(2) returns EINVAL. For another process it works on a copy of the
// descriptor taken with pidfd_getfd (Linux 5.6; it needs the right to
// ptrace pid, as root has). Linux only.
func BreakListener(t testing.TB, pid, port int) {
	t.Helper()
	fd, err := listenerFD(pid, port)
	if err != nil {
		t.Fatal(err)
	}
	if pid != os.Getpid() {
		pidfd, _, errno := syscall.Syscall(sysPidfdOpen, uintptr(pid), 0, 0)
		if errno != 0 {
			t.Fatalf("pidfd_open %d: %v", pid, errno)
		}
		defer syscall.Close(int(pidfd))
		dup, _, errno := syscall.Syscall(sysPidfdGetfd, pidfd, uintptr(fd), 0)
		if errno != 0 {
			t.Fatalf("pidfd_getfd %d of %d: %v", fd, pid, errno)
		}
		defer syscall.Close(int(dup))
		fd = int(dup)
	}
	if err := syscall.Shutdown(fd, syscall.SHUT_RDWR); err != nil {
		t.Fatalf("shutdown listener on port %d of %d: %v", port, pid, err)
	}
}

// Syscall numbers of pidfd_open and pidfd_getfd, the same on every Linux
// architecture (they came after the tables were unified).
const (
	sysPidfdOpen  = 434
	sysPidfdGetfd = 438
)

// listenerFD returns the descriptor of pid's listening TCP socket on port.
func listenerFD(pid, port int) (int, error) {
	proc := filepath.Join("/proc", strconv.Itoa(pid))
	inode := ""
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join(proc, "net", table))
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" {
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && int(p) == port {
				inode = f[9]
			}
		}
	}
	if inode == "" {
		return 0, fmt.Errorf("no listener on port %d", port)
	}
	fds, err := os.ReadDir(filepath.Join(proc, "fd"))
	if err != nil {
		return 0, err
	}
	for _, e := range fds {
		if link, _ := os.Readlink(filepath.Join(proc, "fd", e.Name())); link == "socket:["+inode+"]" {
			return strconv.Atoi(e.Name())
		}
	}
	return 0, fmt.Errorf("listener on port %d: socket %s is not among the open files of %d", port, inode, pid)
}
