package tunnel

import "time"

// Stream handlers run on reused goroutines. A request's handler grows its
// goroutine's stack to tens of kilobytes (HTTP parsing, the app call); a
// new goroutine per stream pays for that growth on every request, a reused
// one once. Workers with nothing to do for workerIdle exit.
const workerIdle = 10 * time.Second

var work = make(chan func())

// spawn runs f on an idle worker, or on a new one if none is waiting.
func spawn(f func()) {
	select {
	case work <- f:
	default:
		go worker(f)
	}
}

func worker(f func()) {
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		f()
		f = nil // let what it holds go while this worker waits
		t.Reset(workerIdle)
		select {
		case f = <-work:
		case <-t.C:
			return
		}
	}
}
