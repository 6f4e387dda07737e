package tunnel

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawPeer is a client that writes frames of its own making to a server
// Conn whose handler reports the streams it gets.
type rawPeer struct {
	fr      *http2.Framer
	enc     *hpack.Encoder
	hbuf    bytes.Buffer
	streams chan *Stream
}

func newRawPeer(t *testing.T, cfg Config) *rawPeer {
	return newRawPeerWith(t, cfg, func(s *Stream) { s.WriteResponse(200, nil, nil, true) })
}

// newRawPeerWith is newRawPeer with a handler of the test's, which runs
// after the stream is reported.
func newRawPeerWith(t *testing.T, cfg Config, h func(*Stream)) *rawPeer {
	cn, sn := tcpPair(t)
	p := &rawPeer{streams: make(chan *Stream, 16)}
	srv := NewServer(sn, cfg, func(s *Stream) {
		p.streams <- s
		h(s)
	})
	go srv.Run()
	t.Cleanup(func() { srv.Close() })
	io.WriteString(cn, http2.ClientPreface)
	p.fr = http2.NewFramer(cn, cn)
	p.fr.WriteSettings()
	p.enc = hpack.NewEncoder(&p.hbuf)
	cn.SetReadDeadline(time.Now().Add(10 * time.Second))
	return p
}

// send writes a header block for stream id, split into frames of at most
// split bytes (HEADERS, then CONTINUATION).
func (p *rawPeer) send(t *testing.T, id uint32, split int, fields ...hpack.HeaderField) {
	p.hbuf.Reset()
	for _, hf := range fields {
		p.enc.WriteField(hf)
	}
	block := p.hbuf.Bytes()
	first := block[:min(split, len(block))]
	rest := block[len(first):]
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: true, EndHeaders: len(rest) == 0}); err != nil {
		t.Fatal(err)
	}
	for len(rest) > 0 {
		n := min(split, len(rest))
		if err := p.fr.WriteContinuation(id, n == len(rest), rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
}

// answer reads frames until the server answers stream id: "status NNN",
// "reset CODE" or "goaway CODE".
func (p *rawPeer) answer(t *testing.T, id uint32) string {
	dec := hpack.NewDecoder(4096, nil)
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			t.Fatalf("no answer for stream %d: %v", id, err)
		}
		switch f := f.(type) {
		case *http2.HeadersFrame:
			fields, err := dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				t.Fatal(err)
			}
			if f.StreamID == id {
				return "status " + fields[0].Value
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return "reset " + f.ErrCode.String()
			}
		case *http2.GoAwayFrame:
			return "goaway " + f.ErrCode.String()
		case *http2.PingFrame:
			if !f.IsAck() {
				p.fr.WritePing(true, f.Data) // a live peer
			}
		}
	}
}

func request(extra ...hpack.HeaderField) []hpack.HeaderField {
	return append([]hpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "web"}, {Name: ":path", Value: "/p"},
	}, extra...)
}

// Header blocks are checked as RFC 9113 section 8.2 asks: a bad field
// resets its stream, a block over the limit is answered 431, and one far
// over it ends the connection.
func TestHeaderBlockChecks(t *testing.T) {
	hf := func(name, value string) hpack.HeaderField { return hpack.HeaderField{Name: name, Value: value} }
	tests := []struct {
		name   string
		fields []hpack.HeaderField
		want   string
	}{
		{"valid", request(hf("x-a", "1")), "status 200"},
		{"NUL in a value", request(hf("x-a", "a\x00b")), "reset PROTOCOL_ERROR"},
		{"line break in a value", request(hf("x-a", "a\r\nx-b: 1")), "reset PROTOCOL_ERROR"},
		{"uppercase name", request(hf("X-A", "1")), "reset PROTOCOL_ERROR"},
		{"space in a name", request(hf("x a", "1")), "reset PROTOCOL_ERROR"},
		{"pseudo after regular", append([]hpack.HeaderField{hf("x-a", "1")}, request()...), "reset PROTOCOL_ERROR"},
		{"unknown pseudo", request(hf(":foo", "1")), "reset PROTOCOL_ERROR"},
		{"duplicate pseudo", append(request(), hf(":path", "/q")), "reset PROTOCOL_ERROR"},
		{"request and response pseudo", append([]hpack.HeaderField{hf(":status", "200")}, request()...), "reset PROTOCOL_ERROR"},
		{"over the limit", request(hf("x-a", strings.Repeat("a", 400)), hf("x-b", strings.Repeat("b", 400)), hf("x-c", strings.Repeat("c", 400))), "status 431"},
		{"a value longer than the limit", request(hf("x-big", strings.Repeat("a", 1500))), "goaway COMPRESSION_ERROR"},
		{"far over the limit", request(hf("x-big", strings.Repeat("a", 9000))), "goaway PROTOCOL_ERROR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newRawPeer(t, Config{Requests: true, MaxHeaderBytes: 1024, MaxFrameSize: 16 << 10})
			p.send(t, 1, 1<<14, tt.fields...)
			if got := p.answer(t, 1); got != tt.want {
				t.Fatalf("answer %q, want %q", got, tt.want)
			}
			if tt.want != "status 200" && len(p.streams) > 0 {
				t.Fatal("the handler got a stream the server refused")
			}
		})
	}
}

// A block split over CONTINUATION frames decodes whole, and the fields a
// stream holds are its own: the reader's buffer, reused for the next
// block, does not change them.
func TestHeaderBlocksAcrossFramesAndStreams(t *testing.T) {
	p := newRawPeer(t, Config{Requests: true})
	p.send(t, 1, 7, request(hpack.HeaderField{Name: "x-first", Value: strings.Repeat("1", 40)})...)
	if got := p.answer(t, 1); got != "status 200" {
		t.Fatalf("stream 1: %s", got)
	}
	s1 := <-p.streams
	p.send(t, 3, 1<<14, request(hpack.HeaderField{Name: "x-second", Value: "2"})...)
	if got := p.answer(t, 3); got != "status 200" {
		t.Fatalf("stream 3: %s", got)
	}
	s3 := <-p.streams
	if s1.Method != "GET" || s1.Path != "/p" || s1.Authority != "web" {
		t.Fatalf("stream 1 request %s %s %s", s1.Method, s1.Authority, s1.Path)
	}
	if len(s1.Fields) != 1 || s1.Fields[0].Name != "x-first" || s1.Fields[0].Value != strings.Repeat("1", 40) {
		t.Fatalf("stream 1 fields %v after stream 3's block", s1.Fields)
	}
	if len(s3.Fields) != 1 || s3.Fields[0].Name != "x-second" {
		t.Fatalf("stream 3 fields %v", s3.Fields)
	}
}

// A block whose HEADERS frame promises CONTINUATION frames that do not
// come ends the connection, without a stream for the handler.
func TestHeaderBlockWithoutContinuation(t *testing.T) {
	p := newRawPeer(t, Config{Requests: true})
	for _, hf := range request() {
		p.enc.WriteField(hf)
	}
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p.hbuf.Bytes(), EndHeaders: false}); err != nil {
		t.Fatal(err)
	}
	if err := p.fr.WriteData(1, true, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := p.answer(t, 1); got != "goaway PROTOCOL_ERROR" {
		t.Fatalf("answer %q, want a GOAWAY", got)
	}
	if len(p.streams) > 0 {
		t.Fatal("the handler got a stream")
	}
}

// statusText is the status code's decimal text, table or not.
func TestStatusText(t *testing.T) {
	for code := 100; code < 1000; code++ {
		if got, want := statusText(code), strconv.Itoa(code); got != want {
			t.Fatalf("statusText(%d) = %q", code, got)
		}
	}
}
