package netconn

import (
	"sync"
	"sync/atomic"
	"time"
)

// Admission is the gate every listener of a process shares: a bound on
// the connections open at once across all of them, and an overload signal
// that sheds new connections while the process's descriptors in use are
// above a high-water mark, before accept(2) and the process's own dials
// start failing with EMFILE. The zero value derives both from
// RLIMIT_NOFILE; a nil *Admission admits everything. It is safe for
// concurrent use.
type Admission struct {
	// MaxConnections bounds the connections open at once across every
	// listener sharing this Admission; 0 means ProcessMaxConnections of
	// the descriptor limit, a negative value no limit.
	MaxConnections int
	// FDHighWater is the number of descriptors in use at which new
	// connections are refused; 0 means FDHighWater of the descriptor
	// limit, a negative value no such check.
	FDHighWater int

	once  sync.Once
	max   int64 // resolved MaxConnections; <= 0: none
	high  int64 // resolved FDHighWater; <= 0: none
	open  atomic.Int64
	fdsMu sync.Mutex // held while counting; others use the estimate
	fds   atomic.Pointer[fdSample]
}

// fdSample is a count of the process's descriptors, and how many
// connections the Admission had open when it was taken: between samples,
// the count moves with the connections opened and closed since.
type fdSample struct {
	at    time.Time
	count int64
	open  int64
}

// ProcessMaxConnections is the default process-wide connection limit for
// a descriptor limit of nofile: what is left after a reserve for the
// process itself (listeners, the control stream, logs, pooled mesh
// connections), halved because a proxied connection usually holds a
// second descriptor, its upstream (the app, a pass-through target).
// At the usual 1,048,576 that is about 490,000; at 1,024, 448.
func ProcessMaxConnections(nofile int) int {
	reserve := 64 + nofile/16
	return max((nofile-reserve)/2, 1)
}

// FDHighWater is the default overload mark for a descriptor limit of
// nofile: new connections are refused from 90 % of it (at least 16
// descriptors below it), which keeps room for the upstream dials of the
// connections already admitted.
func FDHighWater(nofile int) int {
	return max(nofile-max(16, nofile/10), 1)
}

func (a *Admission) init() {
	a.once.Do(func() {
		nofile := DescriptorLimit()
		a.max = int64(a.MaxConnections)
		if a.MaxConnections == 0 && nofile > 0 {
			a.max = int64(ProcessMaxConnections(nofile))
		}
		a.high = int64(a.FDHighWater)
		if a.FDHighWater == 0 && nofile > 0 {
			a.high = int64(FDHighWater(nofile))
		}
	})
}

// Limits returns the limits in force: the process-wide connection limit
// and the descriptor high-water mark, each 0 when there is none.
func (a *Admission) Limits() (maxConnections, fdHighWater int) {
	if a == nil {
		return 0, 0
	}
	a.init()
	return int(max(a.max, 0)), int(max(a.high, 0))
}

// Open returns the number of connections admitted and not yet released.
func (a *Admission) Open() int {
	if a == nil {
		return 0
	}
	return int(a.open.Load())
}

// admit takes a slot for a new connection, or returns why not.
func (a *Admission) admit() string {
	if a == nil {
		return ""
	}
	a.init()
	n := a.open.Add(1)
	if a.max > 0 && n > a.max {
		a.open.Add(-1)
		return RefusedProcessLimit
	}
	if a.high > 0 && a.fdsInUse() >= a.high {
		a.open.Add(-1)
		return RefusedFDHighWater
	}
	return ""
}

func (a *Admission) release() {
	if a != nil {
		a.open.Add(-1)
	}
}

// fdsInUse estimates the descriptors the process has open: the last
// count, moved by the connections admitted and released since. It counts
// afresh every second, or every 50 ms once the last count is past half
// the high-water mark; but never more often than every 20 us per
// descriptor counted (a listing costs up to a microsecond an entry: this
// keeps it to a few percent of an accept loop's time), nor less often
// than every 10 s. One caller counts, on its accept, while the others
// use the estimate.
func (a *Admission) fdsInUse() int64 {
	s := a.fds.Load()
	now := time.Now()
	every := time.Second
	if s != nil {
		if 2*s.count >= a.high {
			every = 50 * time.Millisecond
		}
		every = min(max(every, time.Duration(s.count)*20*time.Microsecond), 10*time.Second)
	}
	if (s == nil || now.Sub(s.at) >= every) && a.fdsMu.TryLock() {
		n, err := countDescriptors()
		switch {
		case err != nil:
			// Opening the listing itself failed: likely no descriptor
			// left, which is what the mark is for.
			n = int(a.high)
		case n < 0:
			n = 0 // not known on this system: the check never fires
		}
		s = &fdSample{at: now, count: int64(n), open: a.open.Load()}
		a.fds.Store(s)
		a.fdsMu.Unlock()
	}
	if s == nil {
		return 0
	}
	return s.count + a.open.Load() - s.open
}
