package tunnel

import "time"

// Stream handlers run on reused goroutines. A request's handler grows its
// goroutine's stack to tens of kilobytes (HTTP parsing, the app call); a
// new goroutine per stream pays for that growth on every request, a reused
// one once. The workers are the connection's: each exits when it has had
// nothing to do for workerIdle or the connection has ended, and Run
// returns only after every one has (see Conn.handlers).
const workerIdle = 10 * time.Second

// spawn serves s on an idle worker of the connection, or on a new one if
// none is waiting. (A stream, not a closure: a closure per stream would
// cost an allocation.)
func (c *Conn) spawn(s *Stream) {
	select {
	case c.work <- s:
	default:
		c.workers.Add(1)
		go c.worker(s)
	}
}

func (c *Conn) worker(s *Stream) {
	defer c.workers.Done()
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		c.serve(s)
		s = nil // let it go while this worker waits
		t.Reset(workerIdle)
		select {
		case s = <-c.work:
		case <-t.C:
			return
		case <-c.done:
			return
		}
	}
}
