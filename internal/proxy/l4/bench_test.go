package l4

import (
	"io"
	"net"
	"testing"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// BenchmarkRoundTrip measures a 100-byte request and answer on one open
// client connection through both sidecars (the keep-alive path).
func BenchmarkRoundTrip(b *testing.B) {
	ca := trellistest.NewCA(b, "trellis.local")
	ch := newChainB(b, ca)
	c, err := net.Dial("tcp", ch)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 100)
	buf := make([]byte, 100)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewConnection measures a new client connection carrying one
// small exchange: a new stream on the pooled mTLS connection.
func BenchmarkNewConnection(b *testing.B) {
	ca := trellistest.NewCA(b, "trellis.local")
	ch := newChainB(b, ca)
	msg := make([]byte, 100)
	buf := make([]byte, 100)
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("tcp", ch)
		if err != nil {
			b.Fatal(err)
		}
		c.Write(msg)
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

func newChainB(b *testing.B, ca *trellistest.CA) string {
	return newChain(b, ca, "web", "client", "web", allowAll).client
}

// BenchmarkBulk measures one-way throughput of one client connection: the
// client streams 8 MiB per op into the app, which counts and acknowledges.
func BenchmarkBulk(b *testing.B) {
	ca := trellistest.NewCA(b, "trellis.local")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	const chunk = 8 << 20
	app := trellistest.Serve(b, l, func(c net.Conn) {
		buf := make([]byte, 64<<10)
		for {
			n, err := io.CopyBuffer(io.Discard, io.LimitReader(c, chunk), buf)
			if err != nil || n < chunk {
				return
			}
			if _, err := c.Write([]byte{1}); err != nil {
				return
			}
		}
	})
	ch := newChain(b, ca, "web", "client", "web", allowAll)
	ch.in.Target = app
	c, err := net.Dial("tcp", ch.client)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, chunk)
	ack := make([]byte, 1)
	b.SetBytes(chunk)
	for b.Loop() {
		if _, err := c.Write(data); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, ack); err != nil {
			b.Fatal(err)
		}
	}
}
