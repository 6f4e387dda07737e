package sidecar

import (
	"context"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// A proxy and a gateway whose control plane does not answer still start
// their listeners, checks and retries; when Run returns, none of it runs
// any more (issue 19, item 10). The runs with a control plane, traffic and
// a listener drained on its own are in internal/control's leak tests.
func TestRunLeavesNoGoroutine(t *testing.T) {
	// Nothing listens there: the proxy keeps retrying.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := dead.Addr().String()
	dead.Close()
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := trellistest.Serve(t, appLn, func(net.Conn) {})
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"proxy", Config{Service: "web", AppAddr: app, Upstreams: []Upstream{{Service: "db", Listen: "127.0.0.1:" + strconv.Itoa(trellistest.FreePort(t))}}}},
		{"gateway", Config{Service: "edge", Gateway: &Gateway{ListenIP: "127.0.0.1"}}},
		// Its exporter's collector is as absent as the control plane.
		{"proxy with tracing", Config{Service: "web", AppAddr: app, Tracing: &Tracing{Endpoint: "grpc://" + server}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			cfg := tc.cfg
			cfg.Server, cfg.Token, cfg.StateDir = server, "trellis_"+"0123456789abcdef0123", t.TempDir()
			cfg.DrainTimeout = 200 * time.Millisecond
			cfg.AdminAddr = "127.0.0.1:" + strconv.Itoa(trellistest.FreePort(t))
			p, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			trellistest.Eventually(t, 10*time.Second, "the proxy serving its admin endpoint", func() error {
				c, err := net.Dial("tcp", cfg.AdminAddr)
				if err == nil {
					c.Close()
				}
				return err
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			// Almost at once, not after goleak's grace of a second or two:
			// Run waited for its own. (A goroutine that has just told
			// Run it is done may still be on its way out: 50 ms for it.)
			var found []string
			for deadline := time.Now().Add(50 * time.Millisecond); ; time.Sleep(time.Millisecond) {
				found = found[:0]
				buf := make([]byte, 1<<22)
				buf = buf[:runtime.Stack(buf, true)]
				for _, g := range strings.Split(string(buf), "\n\n") {
					if strings.Contains(g, "/internal/sidecar.") && !strings.Contains(g, "/internal/sidecar.TestRunLeavesNoGoroutine") {
						found = append(found, g)
					}
				}
				if len(found) == 0 || time.Now().After(deadline) {
					break
				}
			}
			for _, g := range found {
				t.Errorf("after Run returned, a goroutine of the proxy runs:\n%s", g)
			}
		})
	}
}
