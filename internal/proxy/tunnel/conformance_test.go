package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// block writes one header block for stream id in a single HEADERS frame.
func (p *rawPeer) block(t *testing.T, id uint32, end bool, fields ...hpack.HeaderField) {
	t.Helper()
	p.hbuf.Reset()
	for _, hf := range fields {
		p.enc.WriteField(hf)
	}
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.hbuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
}

// TestStreamStatesAndMessages runs the inputs RFC 9113 makes errors
// (sections 5.1, 5.3.1, 6.x and 8.x) against a server Conn, each on a
// connection of its own: the answer is a stream error (RST_STREAM) or a
// connection error (GOAWAY), as the RFC asks and h2spec checks, never a
// response; the handler gets no malformed request; and after a stream
// error the connection still serves.
func TestStreamStatesAndMessages(t *testing.T) {
	hf := func(name, value string) hpack.HeaderField { return hpack.HeaderField{Name: name, Value: value} }
	post := func(extra ...hpack.HeaderField) []hpack.HeaderField {
		return append([]hpack.HeaderField{hf(":method", "POST"), hf(":scheme", "http"), hf(":authority", "web"), hf(":path", "/p")}, extra...)
	}
	tests := []struct {
		name string
		// run writes the frames; the answer awaited is stream 1's.
		run  func(t *testing.T, p *rawPeer)
		want string
		// malformed: stream 1's request is malformed, and must not
		// reach the handler.
		malformed bool
	}{
		{"RST_STREAM on an idle stream", func(t *testing.T, p *rawPeer) {
			p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
		}, "goaway PROTOCOL_ERROR", false},
		{"WINDOW_UPDATE on an idle stream", func(t *testing.T, p *rawPeer) {
			p.fr.WriteWindowUpdate(1, 100)
		}, "goaway PROTOCOL_ERROR", false},
		{"DATA on an idle stream", func(t *testing.T, p *rawPeer) {
			p.fr.WriteData(1, true, []byte("x"))
		}, "goaway PROTOCOL_ERROR", false},
		{"HEADERS on a half-closed (remote) stream", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, request()...)
			p.block(t, 1, true, hf("x-trailer", "1"))
		}, "reset STREAM_CLOSED", false},
		{"DATA after the peer's own RST_STREAM", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, false, post()...)
			p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
			p.fr.WriteData(1, true, []byte("x"))
		}, "reset STREAM_CLOSED", false},
		{"HEADERS on a stream ID below the last", func(t *testing.T, p *rawPeer) {
			p.block(t, 5, true, request()...)
			p.block(t, 1, true, request()...)
		}, "goaway PROTOCOL_ERROR", false},
		{"HEADERS depending on their own stream", func(t *testing.T, p *rawPeer) {
			p.hbuf.Reset()
			for _, f := range request() {
				p.enc.WriteField(f)
			}
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.hbuf.Bytes(), EndStream: true, EndHeaders: true,
				Priority: http2.PriorityParam{StreamDep: 1, Weight: 15}})
		}, "reset PROTOCOL_ERROR", true},
		{"PRIORITY depending on its own stream", func(t *testing.T, p *rawPeer) {
			p.fr.WritePriority(1, http2.PriorityParam{StreamDep: 1, Weight: 15})
		}, "reset PROTOCOL_ERROR", false},
		{"connection-specific field", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, request(hf("connection", "keep-alive"))...)
		}, "reset PROTOCOL_ERROR", true},
		{"transfer-encoding", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, request(hf("transfer-encoding", "chunked"))...)
		}, "reset PROTOCOL_ERROR", true},
		{"te other than trailers", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, request(hf("te", "gzip"))...)
		}, "reset PROTOCOL_ERROR", true},
		{"no :method", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, hf(":scheme", "http"), hf(":authority", "web"), hf(":path", "/"))
		}, "reset PROTOCOL_ERROR", true},
		{"no :scheme", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, hf(":method", "GET"), hf(":authority", "web"), hf(":path", "/"))
		}, "reset PROTOCOL_ERROR", true},
		{"no :path", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, hf(":method", "GET"), hf(":scheme", "http"), hf(":authority", "web"))
		}, "reset PROTOCOL_ERROR", true},
		{"empty :path", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, hf(":method", "GET"), hf(":scheme", "http"), hf(":authority", "web"), hf(":path", ""))
		}, "reset PROTOCOL_ERROR", true},
		{"absolute URI in :path", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, hf(":method", "GET"), hf(":scheme", "http"), hf(":authority", "web"), hf(":path", "http://admin/"))
		}, "reset PROTOCOL_ERROR", true},
		{"asterisk :path for GET", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, hf(":method", "GET"), hf(":scheme", "http"), hf(":authority", "web"), hf(":path", "*"))
		}, "reset PROTOCOL_ERROR", true},
		{"extended CONNECT not offered", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, hf(":method", "CONNECT"), hf(":protocol", "websocket"), hf(":scheme", "http"), hf(":authority", "web"), hf(":path", "/"))
		}, "reset PROTOCOL_ERROR", true},
		{"CONNECT with a :path", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, hf(":method", "CONNECT"), hf(":authority", "web:80"), hf(":path", "/"))
		}, "reset PROTOCOL_ERROR", true},
		{"trailers with a pseudo-header field", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, false, post()...)
			p.block(t, 1, true, hf(":path", "/other"))
		}, "reset PROTOCOL_ERROR", false},
		{"trailers that do not end the stream", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, false, post()...)
			p.block(t, 1, false, hf("x-t", "1"))
		}, "reset PROTOCOL_ERROR", false},
		{"invalid content-length", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, request(hf("content-length", "+1"))...)
		}, "reset PROTOCOL_ERROR", true},
		{"two content-lengths that differ", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, false, post(hf("content-length", "1"), hf("content-length", "2"))...)
		}, "reset PROTOCOL_ERROR", true},
		{"content-length and no body", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, true, post(hf("content-length", "4"))...)
		}, "reset PROTOCOL_ERROR", true},
		{"stream window overflow", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, false, post()...)
			p.fr.WriteWindowUpdate(1, maxWindow)
			p.fr.WriteWindowUpdate(1, maxWindow)
		}, "reset FLOW_CONTROL_ERROR", false},
		{"initial window size that overflows a stream's", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, false, post()...)
			p.fr.WriteWindowUpdate(1, maxWindow-initialWindow)
			p.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: initialWindow + 1})
		}, "goaway FLOW_CONTROL_ERROR", false},
		{"DATA larger than the frame size", func(t *testing.T, p *rawPeer) {
			p.block(t, 1, false, post()...)
			p.fr.WriteData(1, true, make([]byte, 16<<10+1))
		}, "goaway FRAME_SIZE_ERROR", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Stream 1 stays open (half-closed when its request ended)
			// until the test ends; the others are answered.
			p := newRawPeerWith(t, Config{Requests: true, MaxFrameSize: 16 << 10}, func(s *Stream) {
				if s.id == 1 {
					stopped := make(chan struct{})
					s.OnStop(func() { close(stopped) })
					<-stopped
					return
				}
				s.WriteResponse(200, nil, nil, true)
			})
			tt.run(t, p)
			if got := p.answer(t, 1); got != tt.want {
				t.Fatalf("answer %q, want %q", got, tt.want)
			}
			if strings.HasPrefix(tt.want, "goaway") {
				return
			}
			// The error was the stream's: the connection serves on.
			p.block(t, 7, true, request()...)
			if got := p.answer(t, 7); got != "status 200" {
				t.Fatalf("a request after the stream error: %q", got)
			}
			if tt.malformed {
				for len(p.streams) > 0 {
					if s := <-p.streams; s.id == 1 {
						t.Fatalf("the handler got the malformed request (%s %s)", s.Method, s.Path)
					}
				}
			}
		})
	}
}

// A connection error ends with the GOAWAY readable by the peer even when
// the peer had sent more than was read: the server lingers, reading, so
// that its close does not reset the connection under the GOAWAY.
func TestGoAwaySurvivesUnreadInput(t *testing.T) {
	for range 20 {
		p := newRawPeer(t, Config{Requests: true, MaxFrameSize: 16 << 10})
		// An oversized frame (its payload left unread by the server)
		// and more behind it.
		var b bytes.Buffer
		fw := http2.NewFramer(&b, nil)
		fw.AllowIllegalWrites = true
		fw.WriteData(1, false, make([]byte, 100<<10))
		fw.WriteData(1, false, make([]byte, 100<<10))
		go p.fr.WriteRawFrame(http2.FrameData, 0, 1, b.Bytes())
		if got := p.answer(t, 1); got != "goaway FRAME_SIZE_ERROR" {
			t.Fatalf("answer %q", got)
		}
	}
}

// bodyPeer is a rawPeer whose handler reads the request body and reports
// what it read and how the read ended.
type bodyResult struct {
	body []byte
	err  error
}

func newBodyPeer(t *testing.T) (*rawPeer, chan bodyResult, chan []byte) {
	cn, sn := tcpPair(t)
	p := &rawPeer{streams: make(chan *Stream, 16)}
	results := make(chan bodyResult, 4)
	partial := make(chan []byte, 64)
	srv := NewServer(sn, Config{Requests: true}, func(s *Stream) {
		var got []byte
		buf := make([]byte, 64)
		var err error
		for {
			var n int
			n, err = s.Read(buf)
			got = append(got, buf[:n]...)
			if n > 0 {
				partial <- bytes.Clone(got)
			}
			if err != nil {
				break
			}
		}
		if err == io.EOF {
			err = nil
		}
		results <- bodyResult{got, err}
		if err == nil {
			s.WriteResponse(200, nil, nil, true)
		}
	})
	go srv.Run()
	t.Cleanup(func() { srv.Close() })
	io.WriteString(cn, http2.ClientPreface)
	p.fr = http2.NewFramer(cn, cn)
	p.fr.WriteSettings()
	p.enc = hpack.NewEncoder(&p.hbuf)
	cn.SetReadDeadline(time.Now().Add(10 * time.Second))
	return p, results, partial
}

// A body that breaks its content-length fails its stream before the
// handler can read a body of the declared length: the bytes past it never
// reach the handler, and the last declared byte waits for the end of the
// stream.
func TestContentLengthMismatch(t *testing.T) {
	hf := func(name, value string) hpack.HeaderField { return hpack.HeaderField{Name: name, Value: value} }
	post := func(cl string) []hpack.HeaderField {
		return []hpack.HeaderField{hf(":method", "POST"), hf(":scheme", "http"), hf(":authority", "web"), hf(":path", "/p"), hf("content-length", cl)}
	}
	t.Run("more than declared", func(t *testing.T) {
		p, results, _ := newBodyPeer(t)
		p.block(t, 1, false, post("4")...)
		p.fr.WriteData(1, true, []byte("abcdefgh"))
		if got := p.answer(t, 1); got != "reset PROTOCOL_ERROR" {
			t.Fatalf("answer %q", got)
		}
		r := <-results
		if r.err == nil || len(r.body) >= 4 {
			t.Fatalf("handler read %q, err %v: want less than the declared 4 bytes and an error", r.body, r.err)
		}
	})
	t.Run("less than declared", func(t *testing.T) {
		p, results, _ := newBodyPeer(t)
		p.block(t, 1, false, post("8")...)
		p.fr.WriteData(1, false, []byte("abcd"))
		p.fr.WriteData(1, true, []byte("ef"))
		if got := p.answer(t, 1); got != "reset PROTOCOL_ERROR" {
			t.Fatalf("answer %q", got)
		}
		if r := <-results; r.err == nil {
			t.Fatalf("handler read %q with no error", r.body)
		}
	})
	t.Run("declared length, then more", func(t *testing.T) {
		p, results, partial := newBodyPeer(t)
		p.block(t, 1, false, post("4")...)
		p.fr.WriteData(1, false, []byte("abcd"))
		// The handler gets "abc" and waits for the end: a reader of
		// four bytes never sees a complete body.
		if got := <-partial; string(got) != "abc" {
			t.Fatalf("handler read %q before the end of the stream, want abc", got)
		}
		p.fr.WriteData(1, true, []byte("e"))
		if got := p.answer(t, 1); got != "reset PROTOCOL_ERROR" {
			t.Fatalf("answer %q", got)
		}
		if r := <-results; r.err == nil || string(r.body) != "abc" {
			t.Fatalf("handler read %q, err %v", r.body, r.err)
		}
	})
	t.Run("exact", func(t *testing.T) {
		p, results, _ := newBodyPeer(t)
		p.block(t, 1, false, post("4")...)
		p.fr.WriteData(1, false, []byte("ab"))
		p.fr.WriteData(1, true, []byte("cd"))
		if got := p.answer(t, 1); got != "status 200" {
			t.Fatalf("answer %q", got)
		}
		if r := <-results; r.err != nil || string(r.body) != "abcd" {
			t.Fatalf("handler read %q, err %v", r.body, r.err)
		}
	})
}

// The peer's SETTINGS_HEADER_TABLE_SIZE bounds our encoder: with 0, the
// next header block starts by shrinking the table, and indexes nothing
// (a decoder with no dynamic table reads every block).
func TestPeerHeaderTableSize(t *testing.T) {
	p := newRawPeerWith(t, Config{Requests: true}, func(s *Stream) {
		s.WriteResponse(200, []hpack.HeaderField{{Name: "x-served-by", Value: "trellis"}}, nil, true)
	})
	p.fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
	// The server acknowledges before it encodes another block for us.
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && sf.IsAck() {
			break
		}
	}
	dec := hpack.NewDecoder(0, nil)
	for id := uint32(1); id <= 5; id += 2 {
		p.block(t, id, true, request()...)
		for {
			f, err := p.fr.ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			if h, ok := f.(*http2.HeadersFrame); ok {
				if _, err := dec.DecodeFull(h.HeaderBlockFragment()); err != nil {
					t.Fatalf("stream %d: a block our table of 0 cannot read: %v", id, err)
				}
				break
			}
		}
	}
}

// An Open whose context ends just as the response arrives must not wedge
// the connection's reader (which never waits on a stream): the reader
// delivers the response after the abort filled the opener's one slot, and
// later streams on the connection are still answered.
func TestCancelDuringResponseDoesNotBlockReader(t *testing.T) {
	pair := localPair(tcpPair)
	cli, _ := newTunnel(t, Config{}, echoHandler(pair, t))
	ctx, cancel := context.WithCancel(context.Background())
	opened := make(chan error, 1)
	testHookResponse = func(*Stream) {
		testHookResponse = nil // the reader's own write; read by it only
		cancel()
		<-opened // Open has seen its context end, and aborted
	}
	t.Cleanup(func() { testHookResponse = nil })
	if !cli.Reserve() {
		t.Fatal("no room")
	}
	_, err := cli.Open(ctx, "svc")
	opened <- err
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Open: %v, want its context's end", err)
	}
	c, err := open(t, cli, pair)
	if err != nil {
		t.Fatalf("a stream after the cancelled one: %v", err)
	}
	c.Write([]byte("ping"))
	closeWrite(c)
	got, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) || string(got) != "ping" {
		t.Fatalf("echo %q, %v", got, err)
	}
}

// Streams reset while their handlers still run count against the stream
// limit until the handlers return (at twice MaxStreams): a peer that opens
// and resets streams faster than handlers end (the rapid reset attack,
// from a proxy too, whose resets are not rate-limited) gets REFUSED_STREAM
// instead of piling up work.
func TestResetStreamsHandlersStillCount(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	p := newRawPeerWith(t, Config{Requests: true, MaxStreams: 5, PeerIsProxy: true}, func(s *Stream) {
		<-release // a slow app: the handler outlives the reset
	})
	id := uint32(1)
	for range 10 {
		p.block(t, id, false, request()...)
		p.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		id += 2
	}
	// Ten handlers run, none with a stream: the next stream is refused.
	for range 10 {
		<-p.streams // each handler reports its stream as it starts
	}
	p.block(t, id, true, request()...)
	if got := p.answer(t, id); got != "reset REFUSED_STREAM" {
		t.Fatalf("stream %d with 10 handlers running: %q, want REFUSED_STREAM", id, got)
	}
}
