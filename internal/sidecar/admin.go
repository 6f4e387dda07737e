package sidecar

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// adminEndpoint is one admin endpoint, as the admin root lists it.
type adminEndpoint struct{ path, what string }

// adminEndpoints are the admin endpoints every proxy serves.
var adminEndpoints = []adminEndpoint{
	{"/ready", "200 once the proxy has its certificate and configuration and its listeners are up (trellis ready)"},
	{"/config", "the proxy's registration and applied snapshot, as JSON"},
	{"/certs", "the workload certificate: SPIFFE ID, serial, validity and chain, as JSON"},
	{"/metrics", "Prometheus metrics"},
}

// serveAdmin serves the local admin endpoints until ctx ends or l is
// closed (it then returns nil), or l fails.
func (p *Proxy) serveAdmin(ctx context.Context, l net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if why := p.listeners.notReady(); why != "" {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		select {
		case <-p.ready:
			w.Write([]byte("ready\n"))
		default:
			http.Error(w, "not ready: waiting for certificate and configuration", http.StatusServiceUnavailable)
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, r *http.Request) {
		out := map[string]any{"registration": p.reg.Load()}
		if a := p.cur.Load(); a != nil {
			out["snapshot"] = a.snap
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("GET /certs", func(w http.ResponseWriter, r *http.Request) {
		c := p.src.Certificate()
		if c == nil {
			http.Error(w, "no certificate yet", http.StatusServiceUnavailable)
			return
		}
		id, _ := identity.FromCertificate(c.Leaf)
		var chain []byte
		for _, der := range c.Certificate {
			chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
		writeJSON(w, map[string]any{
			"spiffeId":  id.String(),
			"serial":    c.Leaf.SerialNumber.Text(16),
			"notBefore": c.Leaf.NotBefore,
			"notAfter":  c.Leaf.NotAfter,
			"expiresIn": time.Until(c.Leaf.NotAfter).Round(time.Second).String(),
			"chain":     string(chain),
		})
	})
	index := adminEndpoints
	if p.cfg.Pprof {
		if addProfiles != nil {
			addProfiles(mux)
			index = append(index[:len(index):len(index)], adminEndpoint{"/debug/pprof/", "the Go profiler (--pprof)"})
		} else {
			p.log.Warn("--pprof: this build has no profiler (proxyonly)")
		}
	}
	// The root lists what there is, for a person who opens it.
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "Trellis proxy admin\n\n")
		for _, e := range index {
			fmt.Fprintf(w, "  %-14s %s\n", e.path, e.what)
		}
	})
	srv := &http.Server{
		Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		// Temporary accept errors are retried (logged, counted) by the
		// acceptor's listener; what net/http still has to say goes to our
		// log, not stderr.
		ErrorLog: slog.NewLogLogger(p.log.With("listener", "admin").Handler(), slog.LevelWarn),
	}
	// Closed when ctx ends, and in any case before returning: the
	// connections' goroutines, and the closer's, end with serveAdmin.
	served := make(chan struct{})
	var closer sync.WaitGroup
	closer.Go(func() {
		select {
		case <-ctx.Done():
			srv.Close()
		case <-served:
		}
	})
	err := srv.Serve(p.acceptor("admin").Listener(l))
	close(served)
	closer.Wait()
	srv.Close()
	if !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("admin: %w", err)
	}
	return nil
}

// addProfiles adds /debug/pprof to the admin mux in the full build; the
// proxy-only image leaves the profiler out (0.3 MB of mapped binary, which
// the pass-through gateway's memory target cannot spare).
var addProfiles func(*http.ServeMux)

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
