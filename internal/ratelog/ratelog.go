// Package ratelog bounds how many lines a log site writes a second, so
// that what a peer can provoke (a refused request, a failed handshake, a
// guessed token) cannot flood the log: past the bound, lines are counted,
// and the count goes with the next line written.
package ratelog

import (
	"sync"
	"time"
)

// Limit is one log site's budget. The zero value is ready; it is safe for
// concurrent use.
type Limit struct {
	mu         sync.Mutex
	window     time.Time // the start of the current second
	lines      int       // written in this window
	suppressed int       // not written since the last line that was
}

// Take reports whether a line may be written at now, at most perSecond a
// second, and how many were suppressed since the last one written.
func (l *Limit) Take(now time.Time, perSecond int) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.window) >= time.Second || now.Before(l.window) {
		l.window, l.lines = now, 0
	}
	if l.lines >= perSecond {
		l.suppressed++
		return 0, false
	}
	l.lines++
	n := l.suppressed
	l.suppressed = 0
	return n, true
}
