package sidecar

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The profiler is off unless asked for: any local user reaches the admin
// port, and a profile shows what the proxy holds.
func TestPprofOnlyWithTheFlag(t *testing.T) {
	for _, tc := range []struct {
		pprof bool
		want  int
	}{{false, http.StatusNotFound}, {true, http.StatusOK}} {
		p := &Proxy{cfg: Config{Pprof: tc.pprof, Registry: prometheus.NewRegistry()}, log: slog.New(slog.DiscardHandler), ready: make(chan struct{})}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); p.serveAdmin(ctx, l) }()
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1"} {
			resp, err := http.Get("http://" + l.Addr().String() + path)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("pprof=%v: GET %s = %d, want %d", tc.pprof, path, resp.StatusCode, tc.want)
			}
		}
		cancel()
		<-done
	}
}
