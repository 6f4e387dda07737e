package up

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// runLock is the lock one `trellis up` holds while it runs: an flock on
// <home>/up.lock, which the kernel releases however the process ends, so
// a killed up never wedges the next one.
type runLock struct {
	home string
	f    *os.File
	rec  *runRecord
}

// acquire takes the lock, or fails at once with ErrRunning naming the up
// that holds it. An up.json left by one that died (the lock is free)
// names its apps' process groups: the ones still running are killed, and
// swept says how many.
func acquire(home string) (l *runLock, swept int, err error) {
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, 0, err
	}
	f, err := os.OpenFile(lockPath(home), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, 0, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			r, _ := readRecord(home)
			return nil, 0, fmt.Errorf("%w (%s): stop it with Ctrl-C in its terminal, or run `trellis down`", ErrRunning, r.running())
		}
		return nil, 0, fmt.Errorf("lock %s: %w", lockPath(home), err)
	}
	if old, err := readRecord(home); err == nil && old != nil {
		swept = sweep(old.Groups)
	}
	return &runLock{home: home, f: f}, swept, nil
}

// record writes what this up runs to up.json.
func (l *runLock) record(r *runRecord) error {
	l.rec = r
	return writeRecord(l.home, r)
}

// addGroup records an app's process group as soon as it starts.
func (l *runLock) addGroup(name string, pid int) error {
	l.rec.Groups = append(l.rec.Groups, group{Name: name, PGID: pid, Start: startTime(pid)})
	return writeRecord(l.home, l.rec)
}

// release forgets the run and frees the lock, after every app stopped.
func (l *runLock) release() {
	os.Remove(recordPath(l.home))
	l.f.Close() // drops the flock
}

// sweep kills the process groups a dead up left running, and returns how
// many it found. A group whose leader is alive but started at another
// time is someone else's that reused the ID; a group whose leader is gone
// (go run's child outlives go run) is ours while any process still has
// its ID, since an ID in use as a group cannot be taken for a new one.
func sweep(groups []group) int {
	n := 0
	var killed []int
	for _, g := range groups {
		if g.PGID <= 1 {
			continue
		}
		if st := startTime(g.PGID); st != 0 && st != g.Start {
			continue
		}
		if !groupAlive(g.PGID) {
			continue
		}
		if syscall.Kill(-g.PGID, syscall.SIGKILL) == nil {
			n++
			killed = append(killed, g.PGID)
		}
	}
	// They are not ours to wait for (their parent died): watch them go,
	// so that their ports are free when this returns.
	deadline := time.Now().Add(5 * time.Second)
	for _, pgid := range killed {
		for groupAlive(pgid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return n
}

// startTime is pid's start time in clock ticks since boot (field 22 of
// /proc/PID/stat), 0 if it is gone.
func startTime(pid int) uint64 {
	f := statFields(pid)
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(string(f[19]), 10, 64)
	return v
}

// statFields are /proc/PID/stat's fields after the command name (which
// may hold spaces and parentheses): field 3 (state) first.
func statFields(pid int) [][]byte {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return bytes.Fields(b[i+1:])
}

// groupAlive reports whether any live process is in group pgid.
func groupAlive(pgid int) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := statFields(pid)
		// Field 5 is the process group; a zombie (Z) is already dead.
		if len(f) > 2 && string(f[2]) == strconv.Itoa(pgid) && string(f[0]) != "Z" {
			return true
		}
	}
	return false
}

// Down stops the `trellis up` that holds the lock in home (SIGTERM, as
// Ctrl-C would) and waits until it has stopped everything and let go.
func Down(ctx context.Context, home string) (string, error) {
	f, err := os.OpenFile(lockPath(home), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return "", ErrNotRunning
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
		return "", ErrNotRunning
	}
	r, err := readRecord(home)
	if err != nil || r == nil || r.PID <= 1 {
		return "", fmt.Errorf("%w, but %s names no process to stop", ErrRunning, recordPath(home))
	}
	if err := syscall.Kill(r.PID, syscall.SIGTERM); err != nil {
		return r.running(), fmt.Errorf("stop pid %d: %w", r.PID, err)
	}
	// The lock is free once up has stopped its apps and exited; flock has
	// no wait with a deadline, so ask again until ctx ends.
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			return r.running(), nil
		}
		select {
		case <-ctx.Done():
			return r.running(), fmt.Errorf("pid %d has not stopped: %w", r.PID, ctx.Err())
		case <-t.C:
		}
	}
}
