//go:build !proxyonly

package sidecar

import (
	"net/http"
	"net/http/pprof"
)

// Profiles, for the operator on this host: the admin listener is
// loopback-only by default.
func init() {
	addProfiles = func(mux *http.ServeMux) {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
}
