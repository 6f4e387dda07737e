package l7

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Ingress serves requests from outside the mesh: it normalizes the path
// (as sanitize does for every proxied request), picks the first route whose
// host and path prefix match, rewrites the prefix and hands the request to
// the route's service. What no route matches gets 404 and reaches nothing.
// Because matching happens after normalization, /svc/../admin is /admin,
// and /svc/%2e%2e/admin the same; an encoded slash or backslash is refused.
type Ingress struct {
	// Name labels metrics and logs (the gateway and its port).
	Name string
	// Routes returns the listener's current routes.
	Routes func() []v1.GatewayRoute
	// Upstream returns the handler that sends to a service (an Outbound
	// under the gateway's identity), or nil if the service is unknown.
	Upstream func(service string) http.Handler
	// TrustedProxies returns the hops (load balancers in front of the
	// gateway) whose forwarding fields are kept and appended to; nil, or
	// a nil result, trusts none. See forwardFromEdge.
	TrustedProxies func() []netip.Prefix
	// Metrics; nil means unregistered ones.
	Metrics *Metrics
	// Logger; nil discards.
	Logger *slog.Logger

	once sync.Once
}

// init fills in the defaults once: requests on different connections
// run on their own goroutines, so a field set lazily per request races.
func (g *Ingress) init() {
	g.once.Do(func() {
		if g.Metrics == nil {
			g.Metrics = NewMetrics(nil)
		}
		if g.Logger == nil {
			g.Logger = slog.New(slog.DiscardHandler)
		}
	})
}

func (g *Ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.init()
	log := g.Logger
	start := time.Now()
	g.Metrics.dropUnderscored(r, "ingress", false)
	if err := sanitize(r); err != nil {
		g.Metrics.refused(log, r, "ingress", g.Name, "", err.(*badRequest))
		refuse(w, err.(*badRequest))
		g.Metrics.observe("ingress", g.Name, "", "", "", err.(*badRequest).status, start)
		return
	}
	route, rest, ok := matchIngress(g.Routes(), r.Host, r.URL.Path)
	if !ok {
		refuse(w, &badRequest{http.StatusNotFound, "trellis: no route for " + r.URL.Path, "no_route"})
		g.Metrics.observe("ingress", g.Name, "", "", "", http.StatusNotFound, start)
		return
	}
	up := g.Upstream(route.Service)
	if up == nil {
		refuse(w, &badRequest{http.StatusServiceUnavailable, "trellis: service " + route.Service + " is not known yet", "unknown_service"})
		g.Metrics.observe("ingress", g.Name, route.Service, "", "", http.StatusServiceUnavailable, start)
		return
	}
	if route.RewritePrefix != "" {
		p := strings.TrimSuffix(route.RewritePrefix, "/") + rest
		if p == "" || p[0] != '/' {
			p = "/" + p
		}
		r.URL.Path, r.URL.RawPath = p, ""
	}
	// The caller's own claims about the mesh and about forwarding are
	// not ours to keep, unless a trusted hop made them.
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	var trusted []netip.Prefix
	if g.TrustedProxies != nil {
		trusted = g.TrustedProxies()
	}
	forwardFromEdge(r, scheme, trusted)
	// The head was checked against a client's limits above; what the
	// edge just added is the mesh's, which the outbound must not count
	// against the client.
	up.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), fromEdgeKey{}, true)))
}

// matchIngress returns the first route matching host and the normalized
// path, and the part of the path after its prefix ("" or "/...").
func matchIngress(routes []v1.GatewayRoute, host, path string) (v1.GatewayRoute, string, bool) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(host)
	for _, rt := range routes {
		if !hostMatches(rt.Host, host) {
			continue
		}
		prefix := strings.TrimSuffix(rt.PathPrefix, "/")
		switch {
		case path == prefix || prefix == "":
			return rt, path[len(prefix):], true
		case strings.HasPrefix(path, prefix+"/"):
			return rt, path[len(prefix):], true
		}
	}
	return v1.GatewayRoute{}, "", false
}

// hostMatches reports whether host matches pattern: empty matches all,
// "*.example.com" one more label, else equal ignoring case.
func hostMatches(pattern, host string) bool {
	pattern = strings.ToLower(pattern)
	switch {
	case pattern == "":
		return true
	case strings.HasPrefix(pattern, "*."):
		label, rest, ok := strings.Cut(host, ".")
		return ok && label != "" && rest == pattern[2:]
	}
	return pattern == host
}
