package tunnel

import (
	"bytes"
	"io"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// frameSeeds are frame sequences a server must survive: requests, bodies,
// the RFC 9113 errors of conformance_test.go, floods in small.
func frameSeeds() [][]byte {
	var seeds [][]byte
	frames := func(write func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte)) []byte {
		var b, hb bytes.Buffer
		fr := http2.NewFramer(&b, nil)
		fr.AllowIllegalWrites = true
		he := hpack.NewEncoder(&hb)
		enc := func(fields ...hpack.HeaderField) []byte {
			hb.Reset()
			for _, f := range fields {
				he.WriteField(f)
			}
			return bytes.Clone(hb.Bytes())
		}
		fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 100})
		write(fr, enc)
		return b.Bytes()
	}
	req := request()
	seeds = append(seeds,
		frames(func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(req...), EndStream: true, EndHeaders: true})
		}),
		frames(func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte) {
			block := enc(append(req, hpack.HeaderField{Name: "content-length", Value: "3"})...)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:3], EndHeaders: false})
			fr.WriteContinuation(1, true, block[3:])
			fr.WriteData(1, false, []byte("ab"))
			fr.WriteWindowUpdate(1, 10)
			fr.WriteData(1, false, []byte("c"))
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(hpack.HeaderField{Name: "x-t", Value: "1"}), EndStream: true, EndHeaders: true})
		}),
		frames(func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: enc(hpack.HeaderField{Name: ":method", Value: "CONNECT"}, hpack.HeaderField{Name: ":authority", Value: "web"}), EndHeaders: true})
			fr.WriteData(3, false, []byte("tcp bytes"))
			fr.WriteRSTStream(3, http2.ErrCodeCancel)
			fr.WriteData(3, true, []byte("late"))
			fr.WritePriority(5, http2.PriorityParam{StreamDep: 5})
			fr.WriteRSTStream(7, http2.ErrCodeCancel)
		}),
		frames(func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte) {
			for i := range 20 {
				fr.WritePing(false, [8]byte{byte(i)})
				fr.WriteSettings()
				fr.WriteWindowUpdate(0, 1)
			}
			fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		}),
	)
	return seeds
}

// FuzzServerFrames feeds a server Conn whatever frames (or bytes) follow
// the preface: it must not panic, must answer or end, and its Run must
// return once the peer is gone, with every stream's handler done.
func FuzzServerFrames(f *testing.F) {
	for _, s := range frameSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		cn, sn := tcpPair(t)
		handlers := make(chan struct{}, 1024)
		srv := NewServer(sn, Config{Requests: true, MaxFrameSize: 16 << 10, MaxHeaderBytes: 4 << 10}, func(s *Stream) {
			defer func() { handlers <- struct{}{} }()
			if s.Method == "" {
				s.Refuse(403, "no")
				return
			}
			io.Copy(io.Discard, s)
			s.WriteResponse(200, nil, []byte("ok"), true)
		})
		ran := make(chan error, 1)
		go func() { ran <- srv.Run() }()
		go io.Copy(io.Discard, cn) // read what the server says
		cn.Write([]byte(http2.ClientPreface))
		cn.Write(in)
		cn.Close()
		select {
		case <-ran:
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after the peer closed")
		}
		// Every handler started ends: none waits on a stream for ever.
		deadline := time.After(10 * time.Second)
		for srv.StreamCount() > 0 {
			select {
			case <-handlers:
			case <-deadline:
				t.Fatalf("%d streams left after Run returned", srv.StreamCount())
			}
		}
	})
}

// FuzzHeaderBlock decodes arbitrary HPACK bytes as a request's header
// block: no panic, and a block that is not malformed holds what RFC 9113
// section 8.2 allows: pseudo-fields first, lowercase token names, no
// connection-specific field, te only as "trailers".
func FuzzHeaderBlock(f *testing.F) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, fields := range [][]hpack.HeaderField{
		request(),
		request(hpack.HeaderField{Name: "te", Value: "trailers"}, hpack.HeaderField{Name: "cookie", Value: "a=b"}),
		request(hpack.HeaderField{Name: "connection", Value: "close"}),
		{{Name: "x-a", Value: "1"}, {Name: ":path", Value: "/"}},
	} {
		hb.Reset()
		for _, hf := range fields {
			enc.WriteField(hf)
		}
		f.Add(bytes.Clone(hb.Bytes()))
	}
	f.Fuzz(func(t *testing.T, block []byte) {
		var b bytes.Buffer
		fw := http2.NewFramer(&b, nil)
		fw.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndStream: true, EndHeaders: true})
		fr := http2.NewFramer(nil, &b)
		fr.SetMaxReadFrameSize(1 << 20)
		frame, err := fr.ReadFrame()
		if err != nil {
			return
		}
		hr := newHeaderReader(4 << 10)
		hblock, err := hr.read(fr, frame.(*http2.HeadersFrame))
		if err != nil || hblock.malformed != nil {
			return
		}
		for i, hf := range hblock.fields {
			if hf.IsPseudo() != (i < hblock.npseudo) {
				t.Fatalf("field %d %q out of place (%d pseudo-fields)", i, hf.Name, hblock.npseudo)
			}
			if hf.IsPseudo() {
				continue
			}
			if !validFieldName(hf.Name) || connectionSpecific[hf.Name] || hf.Name == "te" && hf.Value != "trailers" {
				t.Fatalf("field %q: %q accepted", hf.Name, hf.Value)
			}
		}
	})
}
