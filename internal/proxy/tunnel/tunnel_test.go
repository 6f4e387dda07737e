package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// localPair makes the two ends of a local connection: TCP sockets (the
// non-blocking fast path) or, with wrappedPair, sockets whose second end is
// wrapped so that the tunnel cannot reach its file descriptor and always
// writes through the flusher.
type localPair func(testing.TB) (net.Conn, net.Conn)

type wrapped struct{ *net.TCPConn }

func wrappedPair(t testing.TB) (net.Conn, net.Conn) {
	a, b := tcpPair(t)
	return a, wrapped{b.(*net.TCPConn)}
}

// newTunnel runs a server Conn whose handler is h and returns a client Conn
// to it, over loopback TCP.
func newTunnel(t testing.TB, cfg Config, h func(*Stream)) (*Conn, *Conn) {
	t.Helper()
	cn, sn := tcpPair(t)
	srv := NewServer(sn, cfg, h)
	go srv.Run()
	cli, err := NewClient(cn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close(); srv.Close() })
	return cli, srv
}

// echoHandler accepts every stream and splices it to an app that echoes.
func echoHandler(pair localPair, t testing.TB) func(*Stream) {
	return func(s *Stream) {
		local, app := pair(t)
		go func() {
			io.Copy(app, app)
			closeWrite(app)
		}()
		if err := s.Accept(); err != nil {
			return
		}
		s.Splice(local)
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// open opens a stream on c and splices it to a fresh local pair, returning
// the caller's end.
func open(t testing.TB, c *Conn, pair localPair) (net.Conn, error) {
	t.Helper()
	if !c.Reserve() {
		return nil, errors.New("no room for a stream")
	}
	s, err := c.Open(context.Background(), "web")
	if err != nil {
		return nil, err
	}
	user, local := pair(t)
	go s.Splice(local)
	return user, nil
}

func TestEcho(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pair    localPair
		cfg     Config
		streams int
		size    int
	}{
		{"sockets", tcpPair, Config{}, 20, 1 << 20},
		{"flusher", wrappedPair, Config{}, 20, 1 << 20},
		{"small windows", tcpPair, Config{StreamWindow: 64 << 10, ConnWindow: 128 << 10, MaxFrameSize: 16384}, 8, 4 << 20},
		{"small windows, flusher", wrappedPair, Config{StreamWindow: 64 << 10, ConnWindow: 128 << 10}, 8, 4 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, _ := newTunnel(t, tc.cfg, echoHandler(tc.pair, t))
			var wg sync.WaitGroup
			for range tc.streams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := open(t, cli, tc.pair)
					if err != nil {
						t.Error(err)
						return
					}
					data := make([]byte, tc.size)
					rand.Read(data)
					go func() {
						c.Write(data)
						closeWrite(c)
					}()
					got, err := io.ReadAll(c)
					if err != nil {
						t.Error(err)
					}
					if !bytes.Equal(got, data) {
						t.Errorf("echo: got %d bytes, want the %d sent", len(got), len(data))
					}
				}()
			}
			wg.Wait()
			eventually(t, 2*time.Second, "streams not released", func() bool { return cli.StreamCount() == 0 })
		})
	}
}

// A stream whose local end stops reading holds only its own window: other
// streams on the connection go on.
func TestStalledStreamDoesNotBlockOthers(t *testing.T) {
	const flood = 8 << 20
	cfg := Config{StreamWindow: 256 << 10}
	cli, _ := newTunnel(t, cfg, func(s *Stream) {
		local, app := tcpPair(t)
		if s.Authority == "flood" {
			go app.Write(make([]byte, flood)) // more than any window and socket buffer
		} else {
			go io.Copy(app, app)
		}
		s.Accept()
		s.Splice(local)
	})
	if !cli.Reserve() {
		t.Fatal("no room")
	}
	fs, err := cli.Open(context.Background(), "flood")
	if err != nil {
		t.Fatal(err)
	}
	stalled, local := tcpPair(t) // never read
	// Small socket buffers: the flood must not fit in the kernel's.
	stalled.(*net.TCPConn).SetReadBuffer(4 << 10)
	local.(*net.TCPConn).SetWriteBuffer(4 << 10)
	go fs.Splice(local)
	defer stalled.Close()
	eventually(t, 10*time.Second, "the flood stream stalled on its local end", func() bool {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		// The local socket takes no more: the flusher waits on it with
		// what it took, or the rest waits for the flusher.
		return fs.flushing || len(fs.pending) > 0
	})

	c, err := open(t, cli, tcpPair)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	for i := range 100 {
		msg := []byte{byte(i), 1, 2, 3}
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("echo %d behind a stalled stream: %v", i, err)
		}
	}
}

func TestHalfClose(t *testing.T) {
	t.Run("caller finishes first", func(t *testing.T) {
		cli, _ := newTunnel(t, Config{}, func(s *Stream) {
			local, app := tcpPair(t)
			go func() {
				req, _ := io.ReadAll(app) // until the caller's half-close
				app.Write(append([]byte("got "), req...))
				app.Close()
			}()
			s.Accept()
			s.Splice(local)
		})
		c, err := open(t, cli, tcpPair)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("ping"))
		closeWrite(c)
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "got ping" {
			t.Fatalf("got %q, %v; want %q", got, err, "got ping")
		}
	})
	t.Run("app finishes first", func(t *testing.T) {
		received := make(chan string, 1)
		cli, _ := newTunnel(t, Config{}, func(s *Stream) {
			local, app := tcpPair(t)
			go func() {
				app.Write([]byte("hello"))
				closeWrite(app)
				rest, _ := io.ReadAll(app)
				received <- string(rest)
			}()
			s.Accept()
			s.Splice(local)
		})
		c, err := open(t, cli, tcpPair)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c) // EOF arrives while our side is open
		if err != nil || string(got) != "hello" {
			t.Fatalf("got %q, %v", got, err)
		}
		c.Write([]byte("bye"))
		c.Close()
		select {
		case r := <-received:
			if r != "bye" {
				t.Fatalf("app received %q after its half-close, want %q", r, "bye")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("app never saw the caller's close")
		}
	})
	t.Run("other side never finishes", func(t *testing.T) {
		appClosed := make(chan struct{})
		cli, _ := newTunnel(t, Config{HalfCloseTimeout: 200 * time.Millisecond}, func(s *Stream) {
			local, app := tcpPair(t)
			go func() {
				app.Write([]byte("bye"))
				closeWrite(app)
				io.Copy(io.Discard, app)
				close(appClosed)
			}()
			s.Accept()
			s.Splice(local)
		})
		c, err := open(t, cli, tcpPair)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close() // the caller never closes on its own
		select {
		case <-appClosed:
		case <-time.After(5 * time.Second):
			t.Fatal("a stream half-closed by the app was never ended")
		}
	})
}

func TestRefuse(t *testing.T) {
	cli, _ := newTunnel(t, Config{}, func(s *Stream) { s.Refuse(http.StatusForbidden, "denied by intention") })
	if !cli.Reserve() {
		t.Fatal("no room")
	}
	_, err := cli.Open(context.Background(), "web")
	var se *StatusError
	if !errors.As(err, &se) || se.Status != 403 || se.Reason != "denied by intention" {
		t.Fatalf("Open = %v, want a 403 with its reason", err)
	}
	eventually(t, 2*time.Second, "refused stream not released", func() bool { return cli.StreamCount() == 0 })
}

func TestPeerResetClosesLocalEnd(t *testing.T) {
	cli, _ := newTunnel(t, Config{}, func(s *Stream) {
		s.Accept()
		s.Close()
	})
	c, err := open(t, cli, tcpPair)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after the peer reset = %v, want the connection ended", err)
	}
}

func TestShutdownDrains(t *testing.T) {
	cli, srv := newTunnel(t, Config{}, echoHandler(tcpPair, t))
	c, err := open(t, cli, tcpPair)
	if err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	eventually(t, 2*time.Second, "client never saw the GOAWAY", func() bool { return !cli.Usable() })
	if cli.Reserve() {
		t.Fatal("a connection going away took a new stream")
	}
	// The open stream still works.
	c.Write([]byte("still here"))
	got := make([]byte, 10)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "still here" {
		t.Fatalf("stream after GOAWAY: %q, %v", got, err)
	}
	c.Close()
	select {
	case <-cli.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection not closed once its last stream ended")
	}
}

// A client that shuts its connection down (a pool retiring it) takes no
// new reservation, but the stream reserved just before still opens: the
// caller who reserved it must not fail for the retirement. The connection
// closes once that stream ends.
func TestClientShutdownOpensReservedStreams(t *testing.T) {
	cli, _ := newTunnel(t, Config{}, echoHandler(tcpPair, t))
	if !cli.Reserve() {
		t.Fatal("no room for a stream")
	}
	cli.Shutdown()
	if cli.Usable() || cli.Reserve() {
		t.Fatal("a connection shut down takes new reservations")
	}
	s, err := cli.Open(context.Background(), "web")
	if err != nil {
		t.Fatalf("open a stream reserved before Shutdown: %v", err)
	}
	user, local := tcpPair(t)
	go s.Splice(local)
	user.Write([]byte("reserved"))
	got := make([]byte, 8)
	user.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(user, got); err != nil || string(got) != "reserved" {
		t.Fatalf("reserved stream after Shutdown: %q, %v", got, err)
	}
	user.Close()
	select {
	case <-cli.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection not closed once its last stream ended")
	}
}

// A server Conn shut down before Run has sent its SETTINGS sends them
// first, then its GOAWAY (RFC 9113 section 3.4), and closes.
func TestServerShutdownBeforeRun(t *testing.T) {
	cn, sn := tcpPair(t)
	srv := NewServer(sn, Config{}, func(s *Stream) { s.Refuse(500, "no") })
	srv.Shutdown()
	go srv.Run()
	if _, err := cn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(cn, cn)
	fr.WriteSettings()
	cn.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.(*http2.SettingsFrame); !ok {
		t.Fatalf("first frame %T, want SETTINGS", f)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("connection ended without a GOAWAY: %v", err)
		}
		if _, ok := f.(*http2.GoAwayFrame); ok {
			break
		}
	}
	select {
	case <-srv.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("idle connection not closed after its GOAWAY")
	}
}

func TestMaxStreams(t *testing.T) {
	cli, _ := newTunnel(t, Config{MaxStreams: 2}, echoHandler(tcpPair, t))
	eventually(t, 2*time.Second, "server's SETTINGS not applied", func() bool {
		cli.mu.Lock()
		defer cli.mu.Unlock()
		return cli.peerMaxStreams == 2
	})
	for i := range 2 {
		if _, err := open(t, cli, tcpPair); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	if cli.Reserve() {
		t.Fatal("a third stream was allowed past the peer's limit of 2")
	}
}

// A peer that stops answering is noticed by the PINGs.
func TestSilentPeer(t *testing.T) {
	cn, sn := tcpPair(t)
	go func() {
		// Take the preface, send SETTINGS, then fall silent (a frozen
		// process: nothing read, nothing written, no FIN).
		io.ReadFull(sn, make([]byte, len(http2.ClientPreface)))
		http2.NewFramer(sn, nil).WriteSettings()
	}()
	cli, err := NewClient(cn, Config{PingAfter: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-cli.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("connection to a silent peer still open")
	}
}

func TestServerRejectsNonHTTP2(t *testing.T) {
	cn, sn := tcpPair(t)
	srv := NewServer(sn, Config{}, func(*Stream) { t.Error("handler called") })
	errc := make(chan error, 1)
	go func() { errc <- srv.Run() }()
	cn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Run accepted an HTTP/1.1 request")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run still running")
	}
}

// The wire is plain HTTP/2: golang.org/x/net/http2's client and server
// interoperate with it.
func TestInteropWithXNetHTTP2(t *testing.T) {
	payload := make([]byte, 3<<20)
	rand.Read(payload)
	want := sha256.Sum256(payload)

	t.Run("x/net client, tunnel server", func(t *testing.T) {
		cn, sn := tcpPair(t)
		srv := NewServer(sn, Config{}, echoHandler(tcpPair, t))
		go srv.Run()
		t.Cleanup(func() { srv.Close() })
		tr := &http2.Transport{AllowHTTP: true}
		cc, err := tr.NewClientConn(cn)
		if err != nil {
			t.Fatal(err)
		}
		pr, pw := io.Pipe()
		req, _ := http.NewRequest(http.MethodConnect, "http://web", pr)
		req.Host = "web"
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		go func() {
			pw.Write(payload)
			pw.Close()
		}()
		got, err := io.ReadAll(resp.Body)
		if err != nil || sha256.Sum256(got) != want {
			t.Fatalf("echo through the tunnel server: %d bytes, %v", len(got), err)
		}
	})
	t.Run("tunnel client, x/net server", func(t *testing.T) {
		cn, sn := tcpPair(t)
		go (&http2.Server{}).ServeConn(sn, &http2.ServeConnOpts{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodConnect || r.Host != "web" {
				http.Error(w, "bad request", 400)
				return
			}
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			io.Copy(w, r.Body) // finishes when our END_STREAM arrives
		})})
		cli, err := NewClient(cn, Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		c, err := open(t, cli, tcpPair)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			c.Write(payload)
			closeWrite(c)
		}()
		got, err := io.ReadAll(c)
		if err != nil || sha256.Sum256(got) != want {
			t.Fatalf("echo through the x/net server: %d bytes, %v", len(got), err)
		}
	})
}

func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	trellistest.Eventually(t, d, what, func() error {
		if cond() {
			return nil
		}
		return errors.New("not yet")
	})
}

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *countingConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// Under TLS, a large DATA frame is several records; the cork sends them
// in one socket write, and the bytes still arrive intact.
func TestCorkSendsAFrameInOneWrite(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	cn, sn := tcpPair(t)
	counted := &countingConn{Conn: cn}
	cork := NewCork(counted)
	tc := tls.Client(cork, ca.Source(t, "client").ClientConfig(certs.ExpectService("web")))
	ts := tls.Server(sn, ca.Source(t, "web").ServerConfig(nil))
	go ts.Handshake()
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	// Full windows from the start: one 128 KiB frame must fit.
	srv := NewServer(ts, Config{InitialStreamWindow: 1 << 20}, echoHandler(tcpPair, t))
	go srv.Run()
	t.Cleanup(func() { srv.Close() })
	cli, err := NewClient(tc, Config{Cork: cork, InitialStreamWindow: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	eventually(t, 2*time.Second, "server's SETTINGS not applied", func() bool {
		cli.mu.Lock()
		defer cli.mu.Unlock()
		return cli.peerFrame == 128<<10
	})
	c, err := open(t, cli, tcpPair)
	if err != nil {
		t.Fatal(err)
	}
	// Prime the buffers, then send exactly one full frame.
	payload := make([]byte, 16<<10)
	rand.Read(payload)
	c.Write(payload)
	io.ReadFull(c, make([]byte, len(payload)))
	payload = make([]byte, 128<<10)
	rand.Read(payload)
	before := counted.count()
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(payload))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo of a frame through the cork: %v", err)
	}
	// 128 KiB is 8 TLS records; allow the frame to have been read in two
	// pieces, and a window update.
	if n := counted.count() - before; n > 3 {
		t.Fatalf("128 KiB of DATA took %d socket writes, want at most 3", n)
	}
}

// A peer that opens and resets streams as fast as it can (CVE-2023-44487)
// is cut off with ENHANCE_YOUR_CALM instead of making the server dial the
// app for each.
func TestRapidResetIsCutOff(t *testing.T) {
	var handled atomic.Int64
	cn, sn := tcpPair(t)
	srv := NewServer(sn, Config{}, func(s *Stream) {
		handled.Add(1)
		s.Refuse(http.StatusForbidden, "no")
	})
	go srv.Run()
	t.Cleanup(func() { srv.Close() })
	io.WriteString(cn, http2.ClientPreface)
	fr := http2.NewFramer(cn, cn)
	fr.WriteSettings()
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	go func() {
		for id := uint32(1); id < 2*5000; id += 2 {
			hbuf.Reset()
			enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
			enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "web"})
			if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hbuf.Bytes(), EndHeaders: true}) != nil ||
				fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
				return
			}
		}
	}()
	cn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("connection ended without a GOAWAY: %v (after %d streams handled)", err, handled.Load())
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", ga.ErrCode)
			}
			break
		}
	}
	if n := handled.Load(); n > 2*maxResetsPerSecond {
		t.Fatalf("%d streams handled before the cut-off", n)
	}
}

// Streams that send at the same moment share socket writes: the goroutine
// that would write first lets the others add their frames. On one P the
// order is fixed: without that yield, each request is a write of its own.
func TestConcurrentStreamsShareWrites(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	cn, sn := tcpPair(t)
	counted := &countingConn{Conn: cn}
	srv := NewServer(sn, Config{Requests: true}, func(s *Stream) {
		s.WriteResponse(200, nil, nil, true)
	})
	go srv.Run()
	t.Cleanup(func() { srv.Close() })
	cli, err := NewClient(counted, Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	request := func() error {
		if !cli.Reserve() {
			return errors.New("no room for a stream")
		}
		s, err := cli.OpenRequest([]hpack.HeaderField{
			{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
			{Name: ":authority", Value: "web"}, {Name: ":path", Value: "/"}}, nil, true)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _, err = s.Response(ctx)
		return err
	}
	if err := request(); err != nil { // SETTINGS exchanged
		t.Fatal(err)
	}
	const n = 64
	start := make(chan struct{})
	errs := make(chan error, n)
	var ready sync.WaitGroup
	ready.Add(n)
	for range n {
		go func() {
			ready.Done()
			<-start
			errs <- request()
		}()
	}
	ready.Wait() // all at the start (one P: none runs on until start closes)
	before := counted.count()
	close(start)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Each request is one HEADERS frame; window updates and SETTINGS
	// acknowledgements may add a few writes.
	if w := counted.count() - before; w > n/4 {
		t.Fatalf("%d requests sent at once took %d socket writes, want at most %d", n, w, n/4)
	}
}

// A reserved stream opened on a connection that has already failed is
// refused, whatever the failure was: the peer saw nothing of it, so the
// caller may send it again elsewhere.
func TestOpenOnFailedConnectionIsRefused(t *testing.T) {
	cli, srv := newTunnel(t, Config{}, echoHandler(tcpPair, t))
	if !cli.Reserve() {
		t.Fatal("no room for a stream")
	}
	srv.Close()
	select {
	case <-cli.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("client never saw the connection end")
	}
	if _, err := cli.Open(context.Background(), "web"); !Refused(err) {
		t.Errorf("Open on a failed connection = %v, want a refusal", err)
	}
	if cli.Reserve() {
		t.Error("a failed connection takes reservations")
	}
}
