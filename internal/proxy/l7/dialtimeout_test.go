package l7

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// blackHoleAddr is an endpoint that takes TCP connections (the kernel's
// backlog does) and never answers: a dial to it hangs in the TLS
// handshake.
func blackHoleAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// The route timeout covers the dial: a black-holed endpoint makes a request
// with a 200ms timeout fail in about that time (not the pool's 5s dial
// timeout), and a request to another endpoint is not delayed meanwhile.
func TestRouteTimeoutCoversDial(t *testing.T) {
	for _, tc := range []struct {
		name string
		hole func(*testing.T) string
	}{
		{"handshake never answered", blackHoleAddr},
		{"connect never answered", func(t *testing.T) string { return trellistest.BlackHole(t) }},
	} {
		t.Run(tc.name, func(t *testing.T) { testRouteTimeoutCoversDial(t, tc.hole(t)) })
	}
}

func testRouteTimeoutCoversDial(t *testing.T, hole string) {
	ca := trellistest.NewCA(t, "trellis.local")
	// One pool for both outbounds, as a sidecar's upstreams share one.
	pool := l4.NewPool(0, 0, nil)
	t.Cleanup(pool.Close)
	cfg := ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), l4.ALPN)
	shared := func(o *Outbound) {
		o.Conn = func(ctx context.Context, ep balance.Endpoint) (*tunnel.Conn, error) {
			return pool.Get(ctx, ep, "web", cfg)
		}
	}
	rt := mustCompile(t, &v1.RouteSpec{Rules: []v1.RouteRule{{Name: "short", Timeout: "200ms"}}})
	url, _ := startOutbound(t, ca, static(rt, balance.Endpoint{Addr: hole, Instance: "hole"}), shared)
	a := startApp(t, "web")
	good, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: startInbound(t, ca, a, allowAll), Instance: "web-1"}), shared)

	type answer struct {
		code int
		body string
		took time.Duration
	}
	holed := make(chan answer, 2)
	for range 2 { // the second waits on the first one's dial
		go func() {
			start := time.Now()
			code, body := getNoFatal(url + "/")
			holed <- answer{code, body, time.Since(start)}
		}()
	}
	if code, body, _ := get(t, good+"/"); code != 200 || body != "web /" {
		t.Errorf("other endpoint: %d %q, want 200", code, body)
	}
	for range 2 {
		r := <-holed
		if r.code != 504 || !strings.Contains(r.body, "200ms") {
			t.Errorf("black-holed endpoint: %d %q, want 504 naming the route timeout", r.code, r.body)
		}
		if r.took > 1500*time.Millisecond {
			t.Errorf("black-holed endpoint answered after %s, want about 200ms", r.took)
		}
	}
}

// The per-try timeout covers the dial too: the first try's black-holed
// endpoint is given up after the per-try timeout, and the retry reaches a
// healthy one well within the route timeout.
func TestPerTryTimeoutCoversDial(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	hole := blackHoleAddr(t)
	a := startApp(t, "web")
	in := startInbound(t, ca, a, allowAll)
	rt := mustCompile(t, &v1.RouteSpec{Rules: []v1.RouteRule{{
		Name: "retried", Timeout: "4s",
		Retries: &v1.RetryPolicy{Attempts: 2, PerTryTimeout: "200ms", On: []string{"connect-failure", "gateway-error"}},
	}}})
	eps := []balance.Endpoint{{Addr: hole, Instance: "hole"}, {Addr: in, Instance: "web-1"}}
	url, _ := startOutbound(t, ca, static(rt, eps...))
	// Whichever endpoint the balancer picks first, each request ends on
	// the healthy one, and none waits for a dial past its try.
	for range 4 {
		start := time.Now()
		code, body, _ := get(t, url+"/")
		took := time.Since(start)
		if code != 200 || body != "web /" {
			t.Fatalf("got %d %q, want 200 from the healthy endpoint", code, body)
		}
		if took > 1500*time.Millisecond {
			t.Fatalf("answered after %s, want within the 200ms try plus a retry", took)
		}
	}
}

// getNoFatal is get for goroutines other than the test's: a failure shows
// as code 0 and the error.
func getNoFatal(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
