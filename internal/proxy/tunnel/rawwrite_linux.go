package tunnel

import (
	"syscall"
	"unsafe"
)

// rawWrite writes p to the non-blocking socket fd with a raw system call:
// it returns at once, so the scheduler need not hear of it (an ordinary
// call lets sysmon hand the P to another thread while it runs).
func rawWrite(fd uintptr, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}
