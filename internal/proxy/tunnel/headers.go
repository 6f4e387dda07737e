package tunnel

import (
	"errors"
	"fmt"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerBlock is one decoded header block: a HEADERS frame and the
// CONTINUATION frames after it. Its fields alias the reader's buffer and
// are valid until the next block is read; what a stream keeps, it copies.
type headerBlock struct {
	streamID  uint32
	endStream bool
	// truncated: the block is over the header list limit, and the fields
	// past it were dropped.
	truncated bool
	fields    []hpack.HeaderField // the pseudo-fields first
	npseudo   int
	// malformed says why the block breaks RFC 9113 section 8 (a stream
	// error); its fields are then incomplete.
	malformed error
	// selfDependent: the HEADERS frame made its stream depend on itself
	// (RFC 9113 section 5.3.1), a stream error.
	selfDependent bool
}

// pseudo returns the value of a pseudo-field (name with its colon).
func (b *headerBlock) pseudo(name string) string {
	for _, hf := range b.fields[:b.npseudo] {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// regular returns the fields that are not pseudo-fields, aliasing the
// reader's buffer.
func (b *headerBlock) regular() []hpack.HeaderField { return b.fields[b.npseudo:] }

// regularCopy returns the regular fields in a slice of their own, with
// room for two more: a proxy relaying a message adds a field or two of its
// own, which would otherwise cost a second slice.
func (b *headerBlock) regularCopy() []hpack.HeaderField {
	if len(b.fields) == b.npseudo {
		return nil
	}
	r := b.regular()
	return append(make([]hpack.HeaderField, 0, len(r)+2), r...)
}

// headerReader decodes a connection's header blocks with its HPACK
// decoder and checks them as RFC 9113 section 8.2 asks, as x/net's
// Framer does when given ReadMetaHeaders. It is the connection's own so
// that a block costs no allocation beyond the fields' strings: the
// Framer's version allocates the frame, its emit closure and the state the
// closure captures, and grows the field slice from nothing, on every block
// (about twenty allocations per proxied request between two sidecars).
type headerReader struct {
	dec        *hpack.Decoder
	limit      uint32 // of the header list, in HPACK's size (RFC 9113 6.5.2)
	remain     uint32
	sawRegular bool
	invalid    error
	block      headerBlock
	// empty is called for each empty CONTINUATION frame that does not end
	// its block; its error (a flood) ends the read.
	empty func() error
}

func newHeaderReader(limit uint32) *headerReader {
	r := &headerReader{limit: limit}
	r.dec = hpack.NewDecoder(4096, r.emit)
	r.dec.SetMaxStringLength(int(limit))
	return r
}

var errPseudoAfterRegular = errors.New("pseudo-header field after a regular one")

func (r *headerReader) emit(hf hpack.HeaderField) {
	pseudo := hf.IsPseudo()
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		// The value is not quoted: it may be a secret.
		r.invalid = fmt.Errorf("invalid value of header field %q", hf.Name)
	} else if pseudo {
		if r.sawRegular {
			r.invalid = errPseudoAfterRegular
		}
	} else {
		r.sawRegular = true
		switch {
		case !validFieldName(hf.Name):
			r.invalid = fmt.Errorf("invalid header field name %q", hf.Name)
		case connectionSpecific[hf.Name]:
			r.invalid = fmt.Errorf("connection-specific header field %q", hf.Name)
		case hf.Name == "te" && hf.Value != "trailers":
			r.invalid = errors.New(`te header field other than "trailers"`)
		}
	}
	if r.invalid != nil {
		r.dec.SetEmitEnabled(false)
		return
	}
	size := hf.Size()
	if size > r.remain {
		// Decoding goes on, to keep the dynamic table in step with the
		// peer's, but nothing more is kept.
		r.dec.SetEmitEnabled(false)
		r.block.truncated = true
		r.remain = 0
		return
	}
	r.remain -= size
	r.block.fields = append(r.block.fields, hf)
	if pseudo {
		r.block.npseudo++
	}
}

// read decodes the block that hf starts, reading its CONTINUATION frames
// from fr (whose frame order checks guarantee they follow). An error is an
// http2.ConnectionError or fr's read error; a block that is only malformed
// comes back with its malformed field set.
func (r *headerReader) read(fr *http2.Framer, hf *http2.HeadersFrame) (*headerBlock, error) {
	b := &r.block
	fields := b.fields[:0]
	if cap(fields) > 64 {
		fields = nil // a large block's buffer is not kept for the next
	}
	*b = headerBlock{streamID: hf.StreamID, endStream: hf.StreamEnded(), fields: fields,
		selfDependent: hf.HasPriority() && hf.Priority.StreamDep == hf.StreamID}
	r.remain, r.sawRegular, r.invalid = r.limit, false, nil
	r.dec.SetEmitEnabled(true)
	frag, ended := hf.HeaderBlockFragment(), hf.HeadersEnded()
	for {
		// A peer far past the limit, or one going on after an invalid
		// field, loses the connection rather than have its fragments
		// decoded only to be dropped (as x/net's Framer does).
		if r.invalid != nil || b.truncated && len(frag) > 0 || int64(len(frag)) > 2*(int64(r.remain)+int64(r.limit)) {
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := r.dec.Write(frag); err != nil {
			return nil, http2.ConnectionError(http2.ErrCodeCompression)
		}
		if ended {
			break
		}
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		cf := f.(*http2.ContinuationFrame)
		frag, ended = cf.HeaderBlockFragment(), cf.HeadersEnded()
		if len(frag) == 0 && !ended && r.empty != nil {
			if err := r.empty(); err != nil {
				return nil, err
			}
		}
	}
	if err := r.dec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if r.invalid == nil {
		r.invalid = checkPseudos(b.fields[:b.npseudo])
	}
	// A malformed block is a stream error, which the connection answers
	// knowing the stream's state: it may open a stream, or end one.
	b.malformed = r.invalid
	return b, nil
}

// connectionSpecific are the fields that describe one HTTP/1.1
// connection, not the message: HTTP/2 makes a message carrying them
// malformed (RFC 9113 section 8.2.2), so that a proxy translating to
// HTTP/1.1 cannot be made to forward them.
var connectionSpecific = map[string]bool{
	"connection": true, "proxy-connection": true, "keep-alive": true,
	"transfer-encoding": true, "upgrade": true,
}

// validFieldName reports whether a field name is a token in lowercase, as
// HTTP/2 requires (RFC 9113 section 8.2.1).
func validFieldName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' || !httpguts.IsTokenRune(rune(c)) {
			return false
		}
	}
	return true
}

// checkPseudos checks a block's pseudo-fields: known names, each once, and
// not those of a request and a response together.
func checkPseudos(pf []hpack.HeaderField) error {
	var request, response bool
	for i, hf := range pf {
		switch hf.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			request = true
		case ":status":
			response = true
		default:
			return fmt.Errorf("unknown pseudo-header field %q", hf.Name)
		}
		for _, prev := range pf[:i] {
			if prev.Name == hf.Name {
				return fmt.Errorf("duplicate pseudo-header field %q", hf.Name)
			}
		}
	}
	if request && response {
		return errors.New("request and response pseudo-header fields together")
	}
	return nil
}
