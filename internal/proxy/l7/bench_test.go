package l7

import (
	"io"
	"net/http"
	"testing"

	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// BenchmarkRequest measures one small keep-alive request through both
// sidecars (client -> outbound -> HTTP/2 mTLS -> inbound -> app).
func BenchmarkRequest(b *testing.B) {
	ca := trellistest.NewCA(b, "trellis.local")
	a := startApp(b, "web")
	in := startInbound(b, ca, a, allowAll)
	url, _ := startOutbound(b, ca, static(mustCompile(b, nil), balance.Endpoint{Addr: in}))
	c := &http.Client{}
	b.ReportAllocs()
	for b.Loop() {
		resp, err := c.Get(url + "/")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// BenchmarkRequestParallel is BenchmarkRequest with 64 clients at once,
// as the keep-alive c64 bench: CPU per request, not latency.
func BenchmarkRequestParallel(b *testing.B) {
	benchParallel(b, &http.Transport{MaxIdleConnsPerHost: 64}, 1)
}

// BenchmarkRequestParallelClose is BenchmarkRequestParallel with a new
// client connection per request, as the close16 bench.
func BenchmarkRequestParallelClose(b *testing.B) {
	benchParallel(b, &http.Transport{DisableKeepAlives: true}, 1)
}

// BenchmarkRequestParallelH2 is BenchmarkRequestParallel for a client
// that speaks HTTP/2 without TLS (h2c) to the outbound, as the h2 bench.
func BenchmarkRequestParallelH2(b *testing.B) {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	benchParallel(b, &http.Transport{Protocols: &protocols}, 2)
}

// benchParallel sends requests through both sidecars from 64 goroutines
// with a client of transport t, which must speak HTTP/proto.
func benchParallel(b *testing.B, t *http.Transport, proto int) {
	ca := trellistest.NewCA(b, "trellis.local")
	a := startApp(b, "web")
	in := startInbound(b, ca, a, allowAll)
	url, _ := startOutbound(b, ca, static(mustCompile(b, nil), balance.Endpoint{Addr: in}))
	c := &http.Client{Transport: t}
	b.ReportAllocs()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(url + "/")
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != proto {
				b.Fatalf("client spoke %s", resp.Proto)
			}
		}
	})
}
