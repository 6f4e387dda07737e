//go:build !linux

package up

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// groupChild leaves cmd as it is: process groups are Linux's here.
func groupChild(*exec.Cmd) {}

// signalGroup signals cmd's process alone (or kills it where signals do
// not exist): its children may outlive it.
func signalGroup(cmd *exec.Cmd, sig syscall.Signal) error {
	err := cmd.Process.Signal(sig)
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		err = cmd.Process.Kill()
	}
	if errors.Is(err, os.ErrProcessDone) {
		return syscall.ESRCH
	}
	return err
}
