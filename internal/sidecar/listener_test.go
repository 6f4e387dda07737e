//go:build linux

package sidecar

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/l7"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/topology"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// A listener that fails for good, not closed by the proxy, makes /ready
// say so and Run return the failure, instead of a port that no longer
// accepts behind a /ready that says all is well. The proxy serves from
// persisted state (no control plane), its public listener is shut down
// under it.
func TestListenerFailureEndsRunAndReadiness(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	cert := ca.SVID(t, "web", time.Hour)
	snap := &topology.Snapshot{Version: "v1", Service: "web", TrustDomain: "trellis.local", RootsPEM: string(ca.RootsPEM()), MTLS: "strict"}
	dir := t.TempDir()
	if err := saveState(dir, persisted{ChainPEM: chainPEM(cert), KeyPEM: string(trellistest.KeyPEM(t, cert)), Snapshot: snap}); err != nil {
		t.Fatal(err)
	}
	appL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := trellistest.Serve(t, appL, func(c net.Conn) { io.Copy(io.Discard, c) })

	type addrs struct{ admin, public string }
	ready := make(chan addrs, 1)
	p, err := New(Config{Service: "web", AppAddr: app, Server: "127.0.0.1:1", Token: "t", StateDir: dir,
		DrainTimeout: 4 * time.Second, HealthInterval: 50 * time.Millisecond,
		OnReady: func(admin, public string) { ready <- addrs{admin, public} }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	var a addrs
	select {
	case a = <-ready:
	case err := <-runErr:
		t.Fatalf("Run ended before ready: %v", err)
	}
	readyz := func() (int, string, error) {
		resp, err := http.Get("http://" + a.admin + "/ready")
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	if code, body, err := readyz(); err != nil || code != http.StatusOK {
		t.Fatalf("/ready before: %d %q %v; want 200", code, body, err)
	}

	_, port, _ := net.SplitHostPort(a.public)
	var portN int
	fmt.Sscan(port, &portN)
	trellistest.BreakListener(t, os.Getpid(), portN)

	// Run takes the failure, deregisters, and drains for a while (at least
	// a second here) before it returns: /ready says why meanwhile.
	trellistest.Eventually(t, 5*time.Second, "/ready reports the failed listener", func() error {
		code, body, err := readyz()
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "public") {
			return fmt.Errorf("/ready: %d %q; want 503 naming the public listener", code, body)
		}
		return nil
	})
	select {
	case err := <-runErr:
		if err == nil || !strings.Contains(err.Error(), "public listener") {
			t.Fatalf("Run = %v, want the public listener's failure", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its public listener failed")
	}
}

func TestLimitsValidate(t *testing.T) {
	base := Config{Service: "web", AppAddr: "127.0.0.1:8080", Server: "127.0.0.1:1", Token: "t"}
	for _, tc := range []struct {
		name   string
		limits Limits
		bad    string // a field the error must name; "" means valid
	}{
		{"defaults", Limits{}, ""},
		{"none", Limits{MaxConnectionsPerListener: -1, MaxConnections: -1, FDHighWater: -1}, ""},
		{"set", Limits{MaxConnectionsPerListener: 100, MaxConnections: 1000, FDHighWater: 900}, ""},
		{"per listener below -1", Limits{MaxConnectionsPerListener: -2}, "limits.maxConnectionsPerListener"},
		{"process below -1", Limits{MaxConnections: -5}, "limits.maxConnections"},
		{"high water below -1", Limits{FDHighWater: -3}, "limits.fdHighWater"},
		{"timeouts and streams", Limits{HeaderReadTimeout: time.Second, BodyReadTimeout: time.Second, IdleTimeout: time.Minute,
			StreamIdleTimeout: time.Minute, MaxConcurrentStreams: 10, StreamBuffer: 256 << 10}, ""},
		{"negative header timeout", Limits{HeaderReadTimeout: -time.Second}, "limits.headerReadTimeout"},
		{"negative stream idle timeout", Limits{StreamIdleTimeout: -1}, "limits.streamIdleTimeout"},
		{"stream buffer under 64 KiB", Limits{StreamBuffer: 1000}, "limits.streamBuffer"},
		{"a million and more streams", Limits{MaxConcurrentStreams: 2 << 20}, "limits.maxConcurrentStreams"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			c.Limits = tc.limits
			err := c.Validate()
			switch {
			case tc.bad == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
				t.Errorf("Validate: %v, want an error naming %s", err, tc.bad)
			}
		})
	}
}

// The HTTP limits of the configuration reach the servers of clients and
// the tunnels, where their own tests (h1, tunnel) show each one hit.
func TestLimitsReachServersAndTunnels(t *testing.T) {
	l := Limits{HeaderReadTimeout: time.Second, BodyReadTimeout: 2 * time.Second, IdleTimeout: 3 * time.Second,
		StreamIdleTimeout: 4 * time.Second, MaxConcurrentStreams: 7, StreamBuffer: 128 << 10}
	srv := l7.NewServer(http.NotFoundHandler(), slog.New(slog.DiscardHandler))
	l.http(srv)
	if srv.HeaderReadTimeout != time.Second || srv.BodyReadTimeout != 2*time.Second || srv.IdleTimeout != 3*time.Second ||
		srv.H2.MaxStreams != 7 || srv.H2.StreamIdleTimeout != 4*time.Second || srv.H2.StreamWindow != 128<<10 || srv.H2.IdleTimeout != 3*time.Second {
		t.Errorf("server limits: %+v, H2 %+v", srv, srv.H2)
	}
	if c := l.tunnel(tunnel.Config{}); c.StreamIdleTimeout != 4*time.Second || c.StreamWindow != 128<<10 {
		t.Errorf("tunnel limits: %+v", c)
	}
}
