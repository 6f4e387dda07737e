//go:build !proxyonly

package sidecar

import (
	"net/http"
	"net/http/pprof"
)

// Profiles, for the operator on this host, only with Config.Pprof: the
// admin listener is on loopback, but every local user can reach it.
func init() {
	addProfiles = func(mux *http.ServeMux) {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
}
