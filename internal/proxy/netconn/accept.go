package netconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/internal/ratelog"
)

// DefaultMaxConnections is a listener's limit on connections open at once
// when Acceptor.MaxConnections is 0. Ten thousand is well above what one
// sidecar's app or one gateway port serves in practice, and at a few tens
// of KiB per open connection (a goroutine, read and write buffers, TLS
// state) it bounds what one listener holds to a few hundred MiB: a flood
// of connections is refused long before it costs the process its memory.
const DefaultMaxConnections = 10000

// Accept loop backoff after a temporary error, as net/http's server does:
// from 5 ms, doubling, to 1 s.
const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

// Counters receives what accept loops count; a role turns them into
// metrics (this package stays free of the metrics client). Implementations
// must be safe for concurrent use.
type Counters interface {
	// AcceptError counts one failed accept on listener that is retried;
	// reason names the error (emfile, enfile, econnaborted, ...).
	AcceptError(listener, reason string)
	// Refused counts a connection closed at once because a limit was
	// reached; reason is one of the Refused* constants.
	Refused(listener, reason string)
}

// Reasons a connection is refused.
const (
	RefusedListenerLimit = "listener_limit" // the listener's MaxConnections
	RefusedProcessLimit  = "process_limit"  // the Admission's MaxConnections
	RefusedFDHighWater   = "fd_high_water"  // descriptors in use above the Admission's high-water mark
)

// Acceptor runs the accept loop of one listener: it retries temporary
// errors (running out of descriptors or buffers, a connection aborted
// before it was accepted) with backoff instead of ending, logs each
// episode of them once (rate-limited) and counts every one, and refuses
// (closes at once, counts) a connection past the listener's or the
// process's limits while those it already has keep being served. The
// zero value, or a nil *Acceptor, is ready: default limit, no Admission,
// nothing logged or counted.
type Acceptor struct {
	// Name labels the listener in logs and counters, such as "public" or
	// "upstream:greeter".
	Name string
	// MaxConnections bounds the listener's connections open at once;
	// 0 means DefaultMaxConnections, a negative value no limit.
	MaxConnections int
	// Admission, when set, is the process-wide gate every listener of the
	// process shares.
	Admission *Admission
	// Logger; nil discards.
	Logger *slog.Logger
	// Counters; nil counts nothing.
	Counters Counters

	// The loop's log lines are rate-limited, each kind on its own budget:
	// with descriptors exhausted, episodes can start and end every few
	// milliseconds, and a flood past a limit is refused as fast as it
	// comes.
	failingLog, recoveredLog, refusedLog ratelog.Limit
}

// Serve accepts connections on l and runs serve on a goroutine of its own
// for each, until l is closed (it then returns nil) or fails for good (it
// returns the error, wrapped with the listener's name). serve owns the
// connection and returns when it is done with it: the connection counts
// against the limits until then. Serve does not wait for the connections'
// goroutines; whoever serve reports to (a server's connection set, its
// drain) does.
func (a *Acceptor) Serve(l net.Listener, serve func(net.Conn)) error {
	if a == nil {
		a = &Acceptor{}
	}
	rl := a.Listener(l).(*retryListener)
	limit := a.MaxConnections
	if limit == 0 {
		limit = DefaultMaxConnections
	}
	var open atomic.Int64 // this listener's connections being served
	for {
		c, err := rl.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept on %s listener: %w", rl.name, err)
		}
		if reason := a.admit(&open, limit); reason != "" {
			// Counted before the close, so whoever sees the refusal
			// (a client, a test) also sees it counted.
			if a.Counters != nil {
				a.Counters.Refused(rl.name, reason)
			}
			c.Close()
			a.logf(&a.refusedLog, rl.log, slog.LevelWarn, "connection refused: limit reached", "listener", rl.name, "reason", reason,
				"listenerOpen", open.Load(), "listenerMax", limit)
			continue
		}
		go func() {
			defer a.release(&open)
			serve(c)
		}()
	}
}

// Listener returns l with Accept retrying temporary errors as Serve does
// (backoff, a log line per episode, each one counted), for a server that
// runs its own accept loop (net/http's): only a closed or failed listener
// reaches it. It applies no connection limit, since it cannot see when a
// connection ends.
func (a *Acceptor) Listener(l net.Listener) net.Listener {
	if a == nil {
		a = &Acceptor{}
	}
	name := a.Name
	if name == "" {
		name = l.Addr().String()
	}
	log := a.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &retryListener{Listener: l, a: a, name: name, log: log}
}

type retryListener struct {
	net.Listener
	a    *Acceptor
	name string
	log  *slog.Logger

	mu       sync.Mutex // serializes Accept, whose backoff state this is
	delay    time.Duration
	failures int
	since    time.Time
}

func (r *retryListener) Accept() (net.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, name, log := r.a, r.name, r.log
	for {
		c, err := r.Listener.Accept()
		if err != nil {
			reason, temporary := acceptErrorReason(err)
			if errors.Is(err, net.ErrClosed) || !temporary {
				return nil, err
			}
			if a.Counters != nil {
				a.Counters.AcceptError(name, reason)
			}
			r.delay = min(max(2*r.delay, minAcceptDelay), maxAcceptDelay)
			if r.failures == 0 {
				r.since = time.Now()
				a.logf(&a.failingLog, log, slog.LevelWarn, "accept failing; retrying with backoff", "listener", name, "reason", reason, "err", err, "retryIn", r.delay)
			}
			r.failures++
			time.Sleep(r.delay)
			continue
		}
		if r.failures > 0 {
			a.logf(&a.recoveredLog, log, slog.LevelInfo, "accepting again", "listener", name, "failures", r.failures, "after", time.Since(r.since).Round(time.Millisecond))
			r.failures, r.delay = 0, 0
		}
		return c, nil
	}
}

// admit takes a slot for a new connection on a listener with open
// connections and limit (negative: none), and returns "" or why the
// connection is refused.
func (a *Acceptor) admit(open *atomic.Int64, limit int) string {
	if n := open.Add(1); limit > 0 && n > int64(limit) {
		open.Add(-1)
		return RefusedListenerLimit
	}
	if reason := a.Admission.admit(); reason != "" {
		open.Add(-1)
		return reason
	}
	return ""
}

func (a *Acceptor) release(open *atomic.Int64) {
	open.Add(-1)
	a.Admission.release()
}

// logf writes a line within limit's budget (one a second), with the count
// of lines it suppressed since the last one.
func (a *Acceptor) logf(limit *ratelog.Limit, log *slog.Logger, level slog.Level, msg string, args ...any) {
	suppressed, ok := limit.Take(time.Now(), 1)
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	log.Log(context.Background(), level, msg, args...)
}

// acceptErrorReason names an accept error and reports whether it is
// temporary: the listener still works, and a later accept may succeed
// (descriptors or memory freed, the next connection not aborted). Any
// other error means the listening socket itself failed.
func acceptErrorReason(err error) (string, bool) {
	for _, t := range temporaryErrnos {
		if errors.Is(err, t.errno) {
			return t.reason, true
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout", true
	}
	return "", false
}

// temporaryErrnos are the accept(2) errors after which the listener still
// works (as net/http's server and Go's syscall.Errno.Temporary judge them,
// and ENOBUFS/ENOMEM, which the kernel returns when it is short of
// memory for a socket).
var temporaryErrnos = []struct {
	errno  syscall.Errno
	reason string
}{
	{syscall.EMFILE, "emfile"},
	{syscall.ENFILE, "enfile"},
	{syscall.ENOBUFS, "enobufs"},
	{syscall.ENOMEM, "enomem"},
	{syscall.ECONNABORTED, "econnaborted"},
	{syscall.ECONNRESET, "econnreset"},
	{syscall.EINTR, "eintr"},
	{syscall.EAGAIN, "eagain"},
	{syscall.EPROTO, "eproto"},
	{syscall.EPERM, "eperm"}, // a firewall rule refused the connection (Linux)
	{syscall.ETIMEDOUT, "etimedout"},
}
