package edge

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// v2Signature starts every PROXY protocol v2 header.
var v2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// FuzzAcceptProxyHeader feeds arbitrary bytes to a listener that requires
// a PROXY protocol header (the reader of untrusted input in front of the
// TLS handshake). It must not panic or hang; a connection it accepts
// started with a PROXY header, and yields exactly the bytes that followed
// the header: none eaten, none made up.
func FuzzAcceptProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.7 198.51.100.1 40123 443\r\nhello"))
	f.Add([]byte("PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\nrest"))
	f.Add([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n"))
	f.Add([]byte("PROXY TCP4 1.2.3.4\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add(append(append([]byte{}, v2Signature...), 0x21, 0x11, 0, 12, 203, 0, 113, 7, 198, 51, 100, 1, 0x9c, 0x3b, 1, 187, 'h', 'i'))
	f.Add(append(append([]byte{}, v2Signature...), 0x20, 0x00, 0, 0, 'x'))           // LOCAL
	f.Add(append(append([]byte{}, v2Signature...), 0x21, 0x11, 0xff, 0xff, 1, 2, 3)) // length past the end
	f.Add(append(append([]byte{}, v2Signature...), 0x21, 0x31, 0, 216))              // unix, too short
	f.Fuzz(func(t *testing.T, in []byte) {
		e := &Listener{AcceptProxy: true, HandshakeTimeout: 2 * time.Second}
		e.init()
		client, server := net.Pipe()
		defer client.Close()
		defer server.Close()
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			client.Write(in)
			client.Close()
		}()
		defer func() {
			server.Close()
			<-wrote
		}()
		c, err := e.accept(server)
		if err != nil {
			return
		}
		hl, ok := proxyHeaderLen(in)
		if !ok {
			t.Fatalf("accepted %q, which does not start with a whole PROXY header", in)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		rest, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("reading what followed the header: %v", err)
		}
		if !bytes.Equal(rest, in[hl:]) {
			t.Fatalf("after the %d-byte header of %q, read %q, want %q", hl, in, rest, in[hl:])
		}
	})
}

// proxyHeaderLen is the length of the PROXY header in, read as the
// protocol defines it: v2's is 16 bytes and the length they give, v1's
// ends with its CRLF (107 bytes at most).
func proxyHeaderLen(in []byte) (int, bool) {
	if bytes.HasPrefix(in, v2Signature) {
		if len(in) < 16 {
			return 0, false
		}
		n := 16 + int(binary.BigEndian.Uint16(in[14:16]))
		return n, n <= len(in)
	}
	if bytes.HasPrefix(in, []byte("PROXY ")) {
		i := bytes.Index(in, []byte("\r\n"))
		return i + 2, i >= 0 && i+2 <= 107
	}
	return 0, false
}
