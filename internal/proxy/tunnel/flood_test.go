package tunnel

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// syncBuffer is a log destination that tests read while servers write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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

// floodServer serves tunnel connections on a loopback listener, as the
// sidecar's listeners do: CONNECT streams are echoed, requests are
// answered 200 with their body once it has all arrived. wrap, if set,
// wraps each accepted connection.
func floodServer(t *testing.T, wrap func(net.Conn) net.Conn) (addr string, logs *syncBuffer) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs = &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []*Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	echo := echoHandler(tcpPair, t)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			if wrap != nil {
				nc = wrap(nc)
			}
			c := NewServer(nc, Config{Requests: true, Logger: logger}, func(s *Stream) {
				if s.Method == "" {
					echo(s)
					return
				}
				body, err := io.ReadAll(s)
				if err != nil {
					return
				}
				s.WriteResponse(200, nil, body, true)
			})
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.Run()
			}()
		}
	}()
	return l.Addr().String(), logs
}

// h2cClient is a well-behaved HTTP/2 client (x/net's) on a connection of
// its own.
func h2cClient(t *testing.T, addr string) *http2.ClientConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(nc)
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

func post(cc *http2.ClientConn, body string) error {
	req, _ := http.NewRequest(http.MethodPost, "http://web/echo", strings.NewReader(body))
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || string(got) != body {
		return fmt.Errorf("status %d, body %q", resp.StatusCode, got)
	}
	return nil
}

// requestBlock is the HPACK block of a POST whose body follows.
func requestBlock() []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, hf := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "web"}, {Name: ":path", Value: "/"},
	} {
		enc.WriteField(hf)
	}
	return b.Bytes()
}

// Each flood of frames that carry no work ends its connection with GOAWAY
// ENHANCE_YOUR_CALM, counted by reason and logged with the peer, while a
// well-behaved client on another connection is served.
func TestFloodsAreCutOff(t *testing.T) {
	const frames = 200000
	// The flooder's stream in flight never ends: its grace, short.
	defer func(g time.Duration) { calmGrace = g }(calmGrace)
	calmGrace = 100 * time.Millisecond
	block := requestBlock()
	connect := func() []byte {
		var b bytes.Buffer
		enc := hpack.NewEncoder(&b)
		enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
		enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "web"})
		return b.Bytes()
	}()
	for _, tc := range []struct {
		reason string
		// start sends what the flood needs first; flood sends frame i.
		start func(fr *http2.Framer) error
		flood func(fr *http2.Framer, i int) error
	}{
		{"settings_flood", nil, func(fr *http2.Framer, i int) error {
			return fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(65535 + i%2)})
		}},
		{"ping_flood", nil, func(fr *http2.Framer, i int) error {
			return fr.WritePing(false, [8]byte{byte(i)})
		}},
		{"empty_data_flood", func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true})
		}, func(fr *http2.Framer, i int) error {
			return fr.WriteData(1, false, nil)
		}},
		// Variants: acknowledgements nobody asked for, DATA whose
		// payload is all padding, window updates on a stream.
		{"settings_flood", nil, func(fr *http2.Framer, i int) error { return fr.WriteSettingsAck() }},
		{"ping_flood", nil, func(fr *http2.Framer, i int) error { return fr.WritePing(true, [8]byte{}) }},
		{"empty_data_flood", func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true})
		}, func(fr *http2.Framer, i int) error {
			return fr.WriteDataPadded(1, false, nil, make([]byte, 200))
		}},
		{"empty_data_flood", func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true})
		}, func(fr *http2.Framer, i int) error {
			return fr.WriteData(1, true, nil) // END_STREAM again and again
		}},
		{"window_update_flood", func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true})
		}, func(fr *http2.Framer, i int) error {
			return fr.WriteWindowUpdate(1, 1)
		}},
		{"empty_continuation_flood", func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:1]})
		}, func(fr *http2.Framer, i int) error {
			return fr.WriteContinuation(1, false, nil)
		}},
		{"window_update_flood", nil, func(fr *http2.Framer, i int) error {
			return fr.WriteWindowUpdate(0, 1)
		}},
		{"priority_flood", nil, func(fr *http2.Framer, i int) error {
			return fr.WritePriority(uint32(2*i+1), http2.PriorityParam{StreamDep: 0, Weight: 15})
		}},
		{"unknown_frame_flood", nil, func(fr *http2.Framer, i int) error {
			return fr.WriteRawFrame(0x20, 0, 0, nil)
		}},
		{"rapid_reset", nil, func(fr *http2.Framer, i int) error {
			id := uint32(2*i + 1)
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: connect, EndHeaders: true}); err != nil {
				return err
			}
			return fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}},
	} {
		t.Run(tc.reason, func(t *testing.T) {
			resetFloodLog() // the cases come faster than the log's limit
			addr, logs := floodServer(t, nil)
			good := h2cClient(t, addr)
			if err := post(good, "before"); err != nil {
				t.Fatalf("well-behaved client before the flood: %v", err)
			}
			before := float64(ProtocolErrorCount(tc.reason))

			cn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer cn.Close()
			bw := bufio.NewWriterSize(cn, 64<<10)
			wfr := http2.NewFramer(bw, nil)
			io.WriteString(bw, http2.ClientPreface)
			wfr.WriteSettings()
			if tc.start != nil {
				tc.start(wfr)
			}
			var sent atomic.Int64
			go func() {
				for i := 0; i < frames; i++ {
					if tc.flood(wfr, i) != nil {
						return
					}
					if i%1024 == 0 && bw.Flush() != nil {
						return
					}
					sent.Add(1)
				}
				bw.Flush()
			}()
			if err := post(good, "during"); err != nil {
				t.Fatalf("well-behaved client during the flood: %v", err)
			}

			rfr := http2.NewFramer(nil, cn)
			cn.SetReadDeadline(time.Now().Add(20 * time.Second))
			var away *http2.GoAwayFrame
			for away == nil {
				f, err := rfr.ReadFrame()
				if err != nil {
					t.Fatalf("connection ended without a GOAWAY after %d frames: %v", sent.Load(), err)
				}
				if ga, ok := f.(*http2.GoAwayFrame); ok {
					away = ga
				}
			}
			if away.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Fatalf("GOAWAY %v (%q), want ENHANCE_YOUR_CALM", away.ErrCode, away.DebugData())
			}
			for {
				if _, err := rfr.ReadFrame(); err != nil {
					if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset") {
						break
					}
					t.Fatalf("connection not closed after the GOAWAY: %v", err)
				}
			}
			if got := float64(ProtocolErrorCount(tc.reason)) - before; got != 1 {
				t.Fatalf("trellis_http2_protocol_errors_total{reason=%q} grew by %v, want 1", tc.reason, got)
			}
			eventually(t, 5*time.Second, "the flood logged", func() bool {
				return strings.Contains(logs.String(), "reason="+tc.reason) &&
					strings.Contains(logs.String(), "remote="+cn.LocalAddr().String())
			})
			if err := post(good, "after"); err != nil {
				t.Fatalf("well-behaved client after the flood: %v", err)
			}
		})
	}
}

// gatedConn holds every write after the first until open is closed: a
// peer that does not read what it is sent.
type gatedConn struct {
	net.Conn
	open   chan struct{}
	writes atomic.Int32
}

func (c *gatedConn) Write(p []byte) (int, error) {
	if c.writes.Add(1) > 1 {
		<-c.open
	}
	return c.Conn.Write(p)
}

// A peer that makes us answer (PING ACKs here, each within the PING
// budget) faster than it reads the answers is cut off once too many are
// queued, with GOAWAY ENHANCE_YOUR_CALM.
func TestControlQueueIsBounded(t *testing.T) {
	// Restored after floodServer's cleanup (they run last first).
	old := maxQueuedControl
	t.Cleanup(func() { maxQueuedControl = old })
	// The write that blocks may hold up to the limit, and the limit more
	// may queue behind it: 80 PINGs (under their budget of 100) and the
	// SETTINGS ACK are more than twice 30.
	maxQueuedControl = 30
	gate := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release)
	resetFloodLog()
	addr, logs := floodServer(t, func(nc net.Conn) net.Conn { return &gatedConn{Conn: nc, open: gate} })
	before := float64(ProtocolErrorCount("control_queue_full"))

	cn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	fr := http2.NewFramer(cn, cn)
	io.WriteString(cn, http2.ClientPreface)
	fr.WriteSettings()
	for i := 0; i < 80; i++ {
		if err := fr.WritePing(false, [8]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "the full control queue counted", func() bool {
		return float64(ProtocolErrorCount("control_queue_full")) == before+1
	})
	release()
	cn.SetReadDeadline(time.Now().Add(10 * time.Second))
	acks := 0
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("connection ended without a GOAWAY: %v", err)
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
			acks++
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", ga.ErrCode)
			}
			break
		}
	}
	// What the blocked write held, and at most the limit behind it.
	if acks > 2*maxQueuedControl {
		t.Fatalf("%d PING ACKs queued, limit %d behind the blocked write", acks, maxQueuedControl)
	}
	if !strings.Contains(logs.String(), "reason=control_queue_full") {
		t.Fatalf("no log line for the full control queue:\n%s", logs)
	}
}

// A busy connection does not trip any budget: thousands of requests a
// second on one connection from x/net's client, and bulk CONNECT streams
// (whose window updates and PINGs come with real work) from the tunnel's
// own client.
func TestLegitimateLoadIsNotAFlood(t *testing.T) {
	addr, _ := floodServer(t, nil)
	var before float64
	for _, r := range floodReasons {
		before += float64(ProtocolErrorCount(r))
	}
	cc := h2cClient(t, addr)
	const requests, workers = 10000, 32
	var next atomic.Int64
	errs := make(chan error, workers)
	start := time.Now()
	for w := 0; w < workers; w++ {
		go func() {
			for next.Add(1) <= requests {
				if err := post(cc, "hello"); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for w := 0; w < workers; w++ {
		if err := <-errs; err != nil {
			t.Fatalf("request failed: %v", err)
		}
	}
	t.Logf("%d requests on one connection in %v", requests, time.Since(start))

	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := NewClient(nc, Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	payload := bytes.Repeat([]byte("x"), 4<<20)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := open(t, cli, tcpPair)
			if err != nil {
				t.Error(err)
				return
			}
			go func() { c.Write(payload); closeWrite(c) }()
			n, err := io.Copy(io.Discard, c)
			if err != nil || n != int64(len(payload)) {
				t.Errorf("echo: %d bytes, %v", n, err)
			}
		}()
	}
	wg.Wait()
	if !cli.Usable() {
		t.Fatalf("tunnel client connection ended: %v", cli.Err())
	}
	if err := post(cc, "still"); err != nil {
		t.Fatalf("x/net client connection ended: %v", err)
	}
	var after float64
	for _, r := range floodReasons {
		after += float64(ProtocolErrorCount(r))
	}
	if after != before {
		t.Fatalf("legitimate load counted as %v floods", after-before)
	}
}

// The flood log writes at most protocolLinesPerSecond lines a second for
// the whole process, and the next line written says how many it held
// back.
func TestFloodLogIsRateLimited(t *testing.T) {
	resetFloodLog()
	var buf syncBuffer
	lg := slog.New(slog.NewTextHandler(&buf, nil))
	for range protocolLinesPerSecond + 7 {
		logProtocol(lg, "flood")
	}
	if n := strings.Count(buf.String(), "flood"); n != protocolLinesPerSecond {
		t.Fatalf("%d lines written in a second, want %d", n, protocolLinesPerSecond)
	}
	resetFloodLog()
}

// resetFloodLog starts the flood log's budget afresh: a line taken at the
// zero time opens a window that the next real line finds over.
func resetFloodLog() { protocolLog.Take(time.Time{}, 1) }

// A server that floods a tunnel client with RST_STREAM frames (on the one
// stream the client opened, again and again: far more than it opened)
// gets GOAWAY ENHANCE_YOUR_CALM from the client. (Resets of streams never
// opened end the connection at the first one, as a protocol error.)
func TestClientCutsOffResetFlood(t *testing.T) {
	cn, sn := tcpPair(t)
	before := float64(ProtocolErrorCount("reset_flood"))
	cli, err := NewClient(cn, Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(sn, preface); err != nil {
		t.Fatal(err)
	}
	if !cli.Reserve() {
		t.Fatal("no room for a stream")
	}
	if _, err := cli.OpenRequest([]hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "a"}, {Name: ":path", Value: "/"}}, nil, true); err != nil {
		t.Fatal(err)
	}
	bw := bufio.NewWriterSize(sn, 64<<10)
	wfr := http2.NewFramer(bw, nil)
	wfr.WriteSettings()
	go func() {
		for i := 0; i < 200000; i++ {
			if wfr.WriteRSTStream(1, http2.ErrCodeCancel) != nil {
				return
			}
			if i%1024 == 0 && bw.Flush() != nil {
				return
			}
		}
		bw.Flush()
	}()
	sn.SetReadDeadline(time.Now().Add(20 * time.Second))
	rfr := http2.NewFramer(nil, sn)
	for {
		f, err := rfr.ReadFrame()
		if err != nil {
			t.Fatalf("connection ended without a GOAWAY: %v", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", ga.ErrCode)
			}
			break
		}
	}
	<-cli.Done()
	if got := float64(ProtocolErrorCount("reset_flood")) - before; got != 1 {
		t.Fatalf("reset_flood counted %v times, want 1", got)
	}
}

// A proxy's connection that one of its clients floods through it gets
// GOAWAY ENHANCE_YOUR_CALM, but its streams in flight (other clients'
// requests) finish: the response comes, then the connection closes. And
// resets from a proxy (PeerIsProxy) are its clients', counted where they
// arrived, not against the shared connection.
func TestCalmLetsStreamsInFlightFinish(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   Config
		flood func(fr *http2.Framer, i int) error
		calm  bool // the flood ends in GOAWAY ENHANCE_YOUR_CALM
	}{
		{"ping flood", Config{Requests: true}, func(fr *http2.Framer, i int) error { return fr.WritePing(false, [8]byte{byte(i)}) }, true},
		{"resets relayed by a proxy", Config{Requests: true, PeerIsProxy: true}, func(fr *http2.Framer, i int) error {
			id := uint32(2*i + 3)
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: requestBlock(), EndHeaders: true}); err != nil {
				return err
			}
			return fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cn, sn := tcpPair(t)
			release := make(chan struct{})
			srv := NewServer(sn, tc.cfg, func(s *Stream) {
				if s.id == 1 {
					<-release // in flight through the flood
				}
				io.Copy(io.Discard, s)
				s.WriteResponse(200, nil, []byte("done"), true)
			})
			go srv.Run()
			t.Cleanup(func() { srv.Close() })
			bw := bufio.NewWriterSize(cn, 64<<10)
			fr := http2.NewFramer(bw, cn)
			io.WriteString(bw, http2.ClientPreface)
			fr.WriteSettings()
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: requestBlock(), EndStream: true, EndHeaders: true})
			for i := range 5000 {
				if tc.flood(fr, i) != nil {
					break
				}
			}
			marker := [8]byte{'m', 'a', 'r', 'k'}
			fr.WritePing(false, marker)
			bw.Flush()
			// The stream is released once the reader has gone through the
			// flood: after the GOAWAY, or after the PING behind the resets.
			cn.SetReadDeadline(time.Now().Add(10 * time.Second))
			var away *http2.GoAwayFrame
			for away == nil {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("reading: %v", err)
				}
				if ga, ok := f.(*http2.GoAwayFrame); ok {
					away = ga
				}
				if p, ok := f.(*http2.PingFrame); ok && p.IsAck() && p.Data == marker {
					break
				}
			}
			close(release)
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("no response on the stream in flight: %v (GOAWAY %v)", err, away)
				}
				switch f := f.(type) {
				case *http2.GoAwayFrame:
					away = f
				case *http2.DataFrame:
					if f.StreamID == 1 && f.StreamEnded() {
						if tc.calm && (away == nil || away.ErrCode != http2.ErrCodeEnhanceYourCalm) {
							t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", away)
						}
						if !tc.calm && away != nil {
							t.Fatalf("GOAWAY %v for resets relayed by a proxy", away.ErrCode)
						}
						return
					}
				}
				if ga, ok := f.(*http2.GoAwayFrame); ok && ga.LastStreamID < 1 {
					t.Fatalf("GOAWAY names stream %d as the last: the stream in flight is dropped", ga.LastStreamID)
				}
			}
		})
	}
}
