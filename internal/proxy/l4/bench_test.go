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
