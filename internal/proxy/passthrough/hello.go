package passthrough

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
	"golang.org/x/crypto/cryptobyte"
)

// The ClientHello is read with x/crypto's cryptobyte, the parser crypto/tls
// is built on, rather than by starting a crypto/tls server handshake and
// abandoning it: that allocated a connection, its buffers and every
// extension's parse for each connection, a third of the gateway's CPU per
// new connection and most of its garbage. Only the record layer and the
// server_name extension (RFC 6066) are read; the bytes go on untouched.

const (
	recordHeaderLen    = 5
	recordTypeHS       = 22 // handshake
	maxPlaintextRecord = 1 << 14
	handshakeClientHi  = 1
	// maxHello bounds the handshake message: a ClientHello with post-
	// quantum key shares is about 1.8 KB, and crypto/tls accepts 64 KiB.
	maxHello   = 1 << 16
	extSNI     = 0
	sniTypeDNS = 0
)

var errNotHello = errors.New("not a TLS ClientHello")

// readHello reads the first handshake message, a ClientHello, and returns
// every byte read (records and all, to be forwarded first) and the server
// name, lowercased ("" when there is none).
func readHello(c net.Conn, timeout time.Duration) ([]byte, string, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	// Through a buffer and raw system calls (netconn.Raw): one read takes
	// a whole ClientHello, where reading the socket itself took one for
	// the record header and one for the rest, each an ordinary system call
	// that keeps the runtime's monitor thread awake.
	br := helloReaders.Get().(*bufio.Reader)
	br.Reset(netconn.Raw(c))
	defer func() {
		br.Reset(nil)
		helloReaders.Put(br)
	}()
	hello, sni, err := helloFrom(br)
	if err == nil && br.Buffered() > 0 {
		// The client sent on without waiting for the server: what was
		// read goes first too.
		rest, _ := br.Peek(br.Buffered())
		hello = append(hello, rest...)
	}
	return hello, sni, err
}

var helloReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}

func helloFrom(c io.Reader) ([]byte, string, error) {
	raw := make([]byte, 0, 2048)
	var msg []byte // the handshake message, reassembled across records
	for {
		start := len(raw)
		raw = slices.Grow(raw, recordHeaderLen)[:start+recordHeaderLen]
		if _, err := io.ReadFull(c, raw[start:]); err != nil {
			return nil, "", fmt.Errorf("record header: %w", err)
		}
		h := raw[start:]
		n := int(h[3])<<8 | int(h[4])
		if h[0] != recordTypeHS || h[1] != 3 || n == 0 || n > maxPlaintextRecord {
			return nil, "", errNotHello
		}
		start = len(raw)
		raw = slices.Grow(raw, n)[:start+n]
		if _, err := io.ReadFull(c, raw[start:]); err != nil {
			return nil, "", fmt.Errorf("record: %w", err)
		}
		msg = append(msg, raw[start:]...)
		if len(msg) < 4 {
			continue
		}
		if msg[0] != handshakeClientHi {
			return nil, "", errNotHello
		}
		want := 4 + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]))
		if want > maxHello {
			return nil, "", fmt.Errorf("ClientHello of %d bytes: over %d", want, maxHello)
		}
		if len(msg) >= want {
			sni, err := serverName(msg[4:want])
			return raw, sni, err
		}
	}
}

// serverName parses a ClientHello body (RFC 8446 4.1.2) for its server
// name.
func serverName(body []byte) (string, error) {
	s := cryptobyte.String(body)
	var version uint16
	var random, sessionID, suites, compression, exts cryptobyte.String
	if !s.ReadUint16(&version) || !s.ReadBytes((*[]byte)(&random), 32) ||
		!s.ReadUint8LengthPrefixed(&sessionID) || !s.ReadUint16LengthPrefixed(&suites) ||
		!s.ReadUint8LengthPrefixed(&compression) {
		return "", errors.New("malformed ClientHello")
	}
	if s.Empty() {
		return "", nil // no extensions at all
	}
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return "", errors.New("malformed ClientHello extensions")
	}
	for !exts.Empty() {
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return "", errors.New("malformed ClientHello extension")
		}
		if typ != extSNI {
			continue
		}
		var names cryptobyte.String
		if !data.ReadUint16LengthPrefixed(&names) || !data.Empty() {
			return "", errors.New("malformed server_name extension")
		}
		for !names.Empty() {
			var nameType uint8
			var name cryptobyte.String
			if !names.ReadUint8(&nameType) || !names.ReadUint16LengthPrefixed(&name) {
				return "", errors.New("malformed server_name extension")
			}
			if nameType != sniTypeDNS {
				continue
			}
			// As crypto/tls: a name with a trailing dot is refused.
			host := string(name)
			if host == "" || strings.HasSuffix(host, ".") {
				return "", fmt.Errorf("invalid server name %q", host)
			}
			return strings.ToLower(host), nil
		}
		return "", nil
	}
	return "", nil
}
