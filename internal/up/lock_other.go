//go:build !linux

package up

import "context"

// runLock is a no-op where trellis up has no process groups to track.
type runLock struct{ rec *runRecord }

func acquire(string) (*runLock, int, error)        { return &runLock{}, 0, nil }
func (l *runLock) record(r *runRecord) error       { l.rec = r; return nil }
func (l *runLock) addGroup(string, int) error      { return nil }
func (l *runLock) release()                        {}
func Down(context.Context, string) (string, error) { return "", ErrNotRunning }
