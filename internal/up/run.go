package up

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// runRecord is what <home>/up.json says of the running `trellis up`:
// who it is, what it runs, and the process groups of its apps, so that
// `trellis down` can stop it and the next `up` can clean up after one
// that was killed before it could.
type runRecord struct {
	PID     int       `json:"pid"`
	Dir     string    `json:"dir"`
	DataDir string    `json:"dataDir"`
	Listen  string    `json:"listen"`
	Started time.Time `json:"started"`
	Groups  []group   `json:"groups,omitempty"`
}

// group is one app's process group: its leader's pid (the group's ID)
// and start time, which tell the group from a later one that reused the
// ID.
type group struct {
	Name  string `json:"name"`
	PGID  int    `json:"pgid"`
	Start uint64 `json:"start"`
}

// ErrRunning says another `trellis up` holds the lock.
var ErrRunning = errors.New("trellis up is already running")

// ErrNotRunning says no `trellis up` holds the lock.
var ErrNotRunning = errors.New("trellis up is not running")

func recordPath(home string) string { return filepath.Join(home, "up.json") }
func lockPath(home string) string   { return filepath.Join(home, "up.lock") }

// readRecord reads <home>/up.json; a missing file is a nil record.
func readRecord(home string) (*runRecord, error) {
	b, err := os.ReadFile(recordPath(home))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r runRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", recordPath(home), err)
	}
	return &r, nil
}

// writeRecord replaces <home>/up.json whole.
func writeRecord(home string, r *runRecord) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := recordPath(home) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, recordPath(home))
}

// running describes r for a person: which up, where, since when.
func (r *runRecord) running() string {
	if r == nil {
		return "pid unknown"
	}
	return fmt.Sprintf("pid %d, %s, since %s", r.PID, r.Dir, r.Started.Local().Format("15:04:05"))
}
