package passthrough

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// clientHello captures the records a crypto/tls client sends first.
func clientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		tls.Client(b, cfg).Handshake()
		b.Close()
	}()
	// The hello is the whole first flight; read until the client waits.
	var out bytes.Buffer
	a.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	io.Copy(&out, a)
	if out.Len() == 0 {
		t.Fatal("no ClientHello")
	}
	return out.Bytes()
}

// serve feeds data to readHello through a real connection pair.
func feed(t testing.TB, data []byte) ([]byte, string, error) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		b.Write(data)
		b.Close()
	}()
	return readHello(a, time.Second)
}

// What crypto/tls's own server makes of the same hello.
func tlsServerName(t testing.TB, hello []byte) string {
	t.Helper()
	var name string
	a, b := net.Pipe()
	go func() { b.Write(hello); b.Close() }()
	tls.Server(a, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		name = h.ServerName
		return nil, io.EOF
	}}).Handshake()
	a.Close()
	return name
}

func TestReadHelloAgreesWithCryptoTLS(t *testing.T) {
	for _, cfg := range []*tls.Config{
		{ServerName: "web.mesh.local"},
		{ServerName: "API.Example.COM", NextProtos: []string{"h2", "http/1.1"}},
		{ServerName: "a.example", MaxVersion: tls.VersionTLS12},
		{ServerName: "pq.example", CurvePreferences: []tls.CurveID{tls.X25519MLKEM768, tls.X25519}},
		{InsecureSkipVerify: true}, // no server name: no SNI extension
		{ServerName: "127.0.0.1"},  // an IP literal: crypto/tls sends no SNI
	} {
		hello := clientHello(t, cfg)
		raw, sni, err := feed(t, hello)
		if err != nil {
			t.Fatalf("%q: %v", cfg.ServerName, err)
		}
		if want := strings.ToLower(tlsServerName(t, hello)); sni != want {
			t.Errorf("server name %q, crypto/tls says %q", sni, want)
		}
		if !bytes.Equal(raw, hello[:len(raw)]) {
			t.Errorf("%q: the bytes read differ from the bytes sent", cfg.ServerName)
		}
	}
}

// A ClientHello split over two records is reassembled; every record read
// is returned, to be forwarded as it came.
func TestReadHelloAcrossRecords(t *testing.T) {
	hello := clientHello(t, &tls.Config{ServerName: "split.example"})
	n := int(hello[3])<<8 | int(hello[4])
	body := hello[5 : 5+n]
	cut := 40
	rec := func(p []byte) []byte { return append([]byte{22, 3, 1, byte(len(p) >> 8), byte(len(p))}, p...) }
	split := append(rec(body[:cut]), rec(body[cut:])...)
	raw, sni, err := feed(t, split)
	if err != nil || sni != "split.example" || !bytes.Equal(raw, split) {
		t.Fatalf("sni %q err %v, %d of %d bytes", sni, err, len(raw), len(split))
	}
}

func TestReadHelloRefuses(t *testing.T) {
	hello := clientHello(t, &tls.Config{ServerName: "web.mesh.local"})
	for name, in := range map[string][]byte{
		"plain HTTP":        []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"alert record":      {21, 3, 3, 0, 2, 2, 40},
		"empty record":      {22, 3, 1, 0, 0},
		"oversized record":  {22, 3, 1, 0x40, 0x01},
		"truncated":         hello[:len(hello)/2],
		"server hello type": {22, 3, 1, 0, 4, 2, 0, 0, 0},
		"huge hello":        {22, 3, 1, 0, 4, 1, 0x10, 0, 0},
		"trailing dot":      helloWithName(t, "web.mesh.local."),
	} {
		if _, sni, err := feed(t, in); err == nil {
			t.Errorf("%s: accepted, server name %q", name, sni)
		}
	}
}

// helloWithName rewrites a real hello's server name (same length) so that
// the names crypto/tls would never send can be tried.
func helloWithName(t *testing.T, name string) []byte {
	t.Helper()
	base := strings.Repeat("x", len(name))
	hello := clientHello(t, &tls.Config{ServerName: base})
	i := bytes.Index(hello, []byte(base))
	return append(append(append([]byte{}, hello[:i]...), name...), hello[i+len(name):]...)
}

func FuzzReadHello(f *testing.F) {
	f.Add(clientHello(f, &tls.Config{ServerName: "web.mesh.local"}))
	f.Add(clientHello(f, &tls.Config{InsecureSkipVerify: true}))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		raw, sni, err := helloFrom(bytes.NewReader(in))
		if err != nil {
			return
		}
		if !bytes.HasPrefix(in, raw) {
			t.Fatalf("returned bytes that were not read")
		}
		if sni != strings.ToLower(sni) {
			t.Fatalf("server name %q not lowercased", sni)
		}
	})
}
