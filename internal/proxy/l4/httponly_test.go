package l4

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// An HTTP service's inbound refuses a raw CONNECT stream (no request, no
// upgrade mark) from an allowed caller: its bytes would reach the app
// past every request check. Plain callers of a permissive mesh go to
// ServePlainHTTP, never to the app directly; without it they are refused.
func TestHTTPOnlyRefusesRawStreams(t *testing.T) {
	ca := trellistest.NewCA(t, "td")
	app, reached := countingApp(t)
	m := NewMetrics(prometheus.NewRegistry())
	var plainServed atomic.Int64
	in := &Inbound{
		TLS: ca.Source(t, "web").ServerConfig(nil, ALPN), Authorize: allowAll, Target: app, Metrics: m,
		HTTPOnly:       func() bool { return true },
		AcceptPlain:    func() bool { return true },
		AuthorizePlain: func() authz.Decision { return authz.Decision{Allow: true} },
		ServePlainHTTP: func(c net.Conn) { plainServed.Add(1); c.Close() },
	}
	pl, _ := net.Listen("tcp", "127.0.0.1:0")
	go in.Serve(pl)
	t.Cleanup(func() { pl.Close() })
	addr := pl.Addr().String()

	pool := NewPool(0, 0, nil)
	t.Cleanup(pool.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if s, err := pool.Open(ctx, Endpoint{Addr: addr}, "web", ca.Source(t, "client").ClientConfig(certs.ExpectService("web"), ALPN)); err == nil {
		fmt.Fprint(s, "get /x/../admin HTTP/1.1\r\nHost: web\r\n\r\n")
		s.Close()
		t.Error("a raw stream to an HTTP service was accepted")
	}
	trellistest.Eventually(t, 5*time.Second, "the refusal counted", func() error {
		if n := testutil.ToFloat64(m.Denied.WithLabelValues("client", CodeNotRequest)); n != 1 {
			return fmt.Errorf("denied{not_request} = %v", n)
		}
		return nil
	})

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c.Read(make([]byte, 1)) // ServePlainHTTP closes it
	c.Close()
	if plainServed.Load() != 1 {
		t.Errorf("ServePlainHTTP served %d plain connections, want 1", plainServed.Load())
	}
	if n := reached.Load(); n != 0 {
		t.Errorf("%d connections and bytes reached the app", n)
	}
}
