package netconn

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// counts is a Counters for tests.
type counts struct {
	mu           sync.Mutex
	acceptErrors map[string]int // by listener/reason
	refused      map[string]int
}

func newCounts() *counts {
	return &counts{acceptErrors: map[string]int{}, refused: map[string]int{}}
}

func (c *counts) AcceptError(listener, reason string) {
	c.mu.Lock()
	c.acceptErrors[listener+"/"+reason]++
	c.mu.Unlock()
}

func (c *counts) Refused(listener, reason string) {
	c.mu.Lock()
	c.refused[listener+"/"+reason]++
	c.mu.Unlock()
}

func (c *counts) get(m *map[string]int, key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return (*m)[key]
}

// echoUntilEOF answers each line on c with the same line.
func echoUntilEOF(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := io.WriteString(c, line); err != nil {
			return
		}
	}
}

// roundTrip writes a line on c and reads its echo. The deadline is a
// safety net for a server that never answers, not a synchronization.
func roundTrip(c net.Conn, line string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		return fmt.Errorf("echo %q, want %q", got, line)
	}
	return nil
}

// assertRefused checks that the server closed c at once, unserved.
func assertRefused(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "x\n")
	if n, err := c.Read(make([]byte, 8)); err == nil {
		t.Fatalf("refused connection answered %d bytes, want it closed", n)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("over the limit, the connection was kept open; want it closed at once")
	}
}

const childEnv = "NETCONN_TEST_EMFILE_CHILD"

// A listener whose process runs out of file descriptors keeps accepting
// once some are freed, logs the episode and counts each failed accept.
// The server runs in a child process (this test binary again) whose
// RLIMIT_NOFILE is lowered to a few more descriptors than it has open, so
// that accept(2) fails with EMFILE after a handful of connections.
func TestAcceptorSurvivesDescriptorExhaustion(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		emfileChild()
		return
	}
	// A child that never says what it is waited for is killed: the test
	// fails instead of hanging.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestAcceptorSurvivesDescriptorExhaustion$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	}()
	out := bufio.NewReader(stdout)
	addrLine, err := out.ReadString('\n')
	if err != nil {
		t.Fatalf("child: %v\n%s", err, stderr.String())
	}
	addr := strings.TrimSpace(strings.TrimPrefix(addrLine, "addr "))

	// The child has room for about 8 connections; 30 go into the
	// listen backlog, the later ones unaccepted while it is full.
	const n = 30
	conns := make([]net.Conn, n)
	for i := range conns {
		if conns[i], err = net.Dial("tcp", addr); err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close()
	}
	// The child says when an accept first failed with EMFILE: its
	// descriptors are all taken.
	if line, err := out.ReadString('\n'); err != nil || line != "exhausted\n" {
		t.Fatalf("child: %q, %v; want it to run out of descriptors\n%s", line, err, stderr.String())
	}
	// Each connection is answered once the child accepts it: the first
	// few at once; the others only after earlier ones have closed and
	// given their descriptors back.
	for i, c := range conns {
		if err := roundTrip(c, fmt.Sprintf("conn %d", i)); err != nil {
			t.Fatalf("connection %d: %v (the listener stopped accepting?)\nchild log:\n%s", i, err, stderr.String())
		}
		c.Close()
	}
	io.WriteString(stdin, "report\n")
	report, err := out.ReadString('\n')
	if err != nil {
		t.Fatalf("child report: %v\n%s", err, stderr.String())
	}
	var emfile, closedNil int
	if _, err := fmt.Sscanf(report, "emfile %d nil %d", &emfile, &closedNil); err != nil {
		t.Fatalf("child report %q: %v", report, err)
	}
	if emfile == 0 {
		t.Errorf("no EMFILE accept error counted; the limit did not bite (child log:\n%s)", stderr.String())
	}
	if closedNil != 1 {
		t.Errorf("Serve after Close returned an error, want nil")
	}
	cmd.Wait() // the child exits after its report: its log is complete
	log := stderr.String()
	for _, want := range []string{`"msg":"accept failing; retrying with backoff"`, `"reason":"emfile"`, `"msg":"accepting again"`} {
		if !strings.Contains(log, want) {
			t.Errorf("child log lacks %s:\n%s", want, log)
		}
	}
}

// emfileChild serves echo on a listener with RLIMIT_NOFILE a few above the
// descriptors it has open, prints its address, and on "report" on stdin
// prints the count of EMFILE accept errors and whether Serve returned nil
// after Close.
func emfileChild() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	open, err := countDescriptors()
	if err != nil {
		panic(err)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		panic(err)
	}
	lim.Cur = uint64(open + 8)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		panic(err)
	}
	c := &exhaustion{counts: newCounts()}
	a := &Acceptor{Name: "child", Counters: c, Logger: slog.New(slog.NewJSONHandler(os.Stderr, nil))}
	done := make(chan error, 1)
	go func() { done <- a.Serve(l, echoUntilEOF) }()
	fmt.Printf("addr %s\n", l.Addr())
	bufio.NewReader(os.Stdin).ReadString('\n')
	l.Close()
	nilErr := 0
	if err := <-done; err == nil {
		nilErr = 1
	} else {
		fmt.Fprintln(os.Stderr, "Serve:", err)
	}
	fmt.Printf("emfile %d nil %d\n", c.get(&c.acceptErrors, "child/emfile"), nilErr)
	os.Exit(0)
}

// syncBuffer is a buffer a child process writes while a test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// exhaustion prints "exhausted" on stdout at the first EMFILE.
type exhaustion struct {
	*counts
	once sync.Once
}

func (e *exhaustion) AcceptError(listener, reason string) {
	e.counts.AcceptError(listener, reason)
	if reason == "emfile" {
		e.once.Do(func() { fmt.Println("exhausted") })
	}
}

// Past its MaxConnections a listener closes new connections at once and
// counts them, while those it has keep being served; a slot freed is
// taken again.
func TestAcceptorListenerLimit(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := newCounts()
	a := &Acceptor{Name: "limited", MaxConnections: 3, Counters: c}
	done := make(chan error, 1)
	go func() { done <- a.Serve(l, echoUntilEOF) }()
	t.Cleanup(func() {
		l.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve after Close: %v, want nil", err)
		}
	})

	var held []net.Conn
	for i := range 3 {
		cn, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer cn.Close()
		// Answered: accepted and counted before the next dial.
		if err := roundTrip(cn, fmt.Sprintf("held %d", i)); err != nil {
			t.Fatal(err)
		}
		held = append(held, cn)
	}
	over, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	assertRefused(t, over)
	if got := c.get(&c.refused, "limited/"+RefusedListenerLimit); got != 1 {
		t.Errorf("refused count %d, want 1", got)
	}
	for i, cn := range held {
		if err := roundTrip(cn, "still served"); err != nil {
			t.Errorf("held connection %d after a refusal: %v", i, err)
		}
	}
	// A connection that ends frees its slot; until the server sees the
	// end, a new one may still be refused, so retry.
	held[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cn, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		err = roundTrip(cn, "after a slot freed")
		cn.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after a slot was freed: %v", err)
		}
	}
}

// The process-wide limit counts the connections of every listener that
// shares the Admission.
func TestAdmissionProcessLimit(t *testing.T) {
	adm := &Admission{MaxConnections: 2, FDHighWater: -1}
	c := newCounts()
	var addrs []string
	for _, name := range []string{"one", "two"} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a := &Acceptor{Name: name, Admission: adm, Counters: c}
		done := make(chan error, 1)
		go func() { done <- a.Serve(l, echoUntilEOF) }()
		t.Cleanup(func() { l.Close(); <-done })
		addrs = append(addrs, l.Addr().String())
	}
	for _, addr := range addrs {
		cn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer cn.Close()
		if err := roundTrip(cn, "within"); err != nil {
			t.Fatal(err)
		}
	}
	if got := adm.Open(); got != 2 {
		t.Errorf("Open() = %d, want 2", got)
	}
	over, err := net.Dial("tcp", addrs[1])
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	assertRefused(t, over)
	if got := c.get(&c.refused, "two/"+RefusedProcessLimit); got != 1 {
		t.Errorf("refused count %d, want 1 for the process limit", got)
	}
}

// With descriptors in use at the high-water mark, new connections are
// shed; below it, they are served.
func TestAdmissionFDHighWater(t *testing.T) {
	open, err := countDescriptors()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		high   int
		refuse bool
	}{
		{"at the mark", open, true},
		{"well below", open + 1000, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			c := newCounts()
			a := &Acceptor{Name: "fds", Admission: &Admission{MaxConnections: -1, FDHighWater: tc.high}, Counters: c}
			done := make(chan error, 1)
			go func() { done <- a.Serve(l, echoUntilEOF) }()
			defer func() { l.Close(); <-done }()
			cn, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer cn.Close()
			if tc.refuse {
				assertRefused(t, cn)
				if got := c.get(&c.refused, "fds/"+RefusedFDHighWater); got != 1 {
					t.Errorf("refused count %d, want 1", got)
				}
				return
			}
			if err := roundTrip(cn, "below the mark"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A listening socket that fails for good (here shut down under the
// loop, so that accept(2) returns EINVAL) ends Serve with an error naming
// the listener; one closed by its owner ends it with nil.
func TestAcceptorReportsListenerFailure(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a := &Acceptor{Name: "public"}
	done := make(chan error, 1)
	go func() { done <- a.Serve(l, echoUntilEOF) }()
	rc, err := l.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	rc.Control(func(fd uintptr) { serr = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
	if serr != nil {
		t.Fatal(serr)
	}
	err = <-done
	if err == nil || !strings.Contains(err.Error(), "public listener") {
		t.Fatalf("Serve = %v, want an error naming the public listener", err)
	}
}

func TestAcceptErrorReason(t *testing.T) {
	for _, tc := range []struct {
		err       error
		reason    string
		temporary bool
	}{
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EMFILE)}, "emfile", true},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ENFILE)}, "enfile", true},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ENOBUFS)}, "enobufs", true},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ECONNABORTED)}, "econnaborted", true},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EINVAL)}, "", false},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EBADF)}, "", false},
		{errors.New("something else"), "", false},
	} {
		reason, temp := acceptErrorReason(tc.err)
		if reason != tc.reason || temp != tc.temporary {
			t.Errorf("acceptErrorReason(%v) = %q, %v; want %q, %v", tc.err, reason, temp, tc.reason, tc.temporary)
		}
	}
}

func TestDefaultLimits(t *testing.T) {
	for _, tc := range []struct{ nofile, conns, high int }{
		{1024, 448, 922},
		{1048576, 491488, 943719},
		{200, 62, 180},
		{16, 1, 1},
	} {
		if got := ProcessMaxConnections(tc.nofile); got != tc.conns {
			t.Errorf("ProcessMaxConnections(%d) = %d, want %d", tc.nofile, got, tc.conns)
		}
		if got := FDHighWater(tc.nofile); got != tc.high {
			t.Errorf("FDHighWater(%d) = %d, want %d", tc.nofile, got, tc.high)
		}
	}
}

// A server that runs its own accept loop (net/http's) over Listener sees
// only a failed or closed listener: it ends with the failure, where it
// would otherwise retry forever, and with ErrServerClosed when closed.
func TestListenerForOwnLoops(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	done := make(chan error, 1)
	go func() { done <- srv.Serve((&Acceptor{Name: "admin"}).Listener(l)) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	rc, err := l.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
	if err := <-done; err == nil || errors.Is(err, http.ErrServerClosed) || !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Serve = %v, want the listener's EINVAL", err)
	}
}
