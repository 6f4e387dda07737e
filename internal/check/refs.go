package check

import (
	"cmp"
	"fmt"
	"slices"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/yamlfields"
)

// Routes checks that every version a Route sends weight to has a healthy
// instance: the share sent to one without gets 503 from the caller's
// proxy ("no healthy endpoint of S version V").
func Routes(m Mesh) []Finding {
	ix := newIndex(m)
	var out []Finding
	n := 0
	for _, r := range byName(m.Resources, v1.KindRoute) {
		n++
		at := where(v1.KindRoute, r.Name)
		for i, rule := range r.Route.Rules {
			total := 0
			for _, t := range rule.Targets {
				total += t.Weight
			}
			name := cmp.Or(rule.Name, fmt.Sprintf("rule-%d", i+1))
			for _, t := range rule.Targets {
				if t.Weight <= 0 {
					continue
				}
				all, healthy := ix.healthy(r.Name, func(in v1.Instance) bool { return in.Version == t.Version })
				share := fmt.Sprintf("%s sends %d %% to version %q of %s", name, t.Weight*100/max(total, 1), t.Version, r.Name)
				switch {
				case all == 0:
					out = append(out, Finding{Severity: Error, Check: "routes", Where: at,
						What: share + ", which has no instance: those requests fail (503)",
						Fix:  fmt.Sprintf("start %s version %s, or set its weight to 0 and apply the Route again", r.Name, t.Version)})
				case healthy == 0:
					out = append(out, Finding{Severity: Error, Check: "routes", Where: at,
						What: fmt.Sprintf("%s, whose %d instances are all unhealthy: those requests fail (503)", share, all),
						Fix:  fmt.Sprintf("see why the app's health check fails (trellis get instances %s), or set the version's weight to 0", r.Name)})
				}
			}
		}
	}
	if len(out) == 0 {
		out = append(out, ok("routes", fmt.Sprintf("%d routes, each version they send to has a healthy instance", n)))
	}
	return out
}

// Intentions checks that every intention names services the mesh knows
// (a Service resource, a registered instance or a Gateway): one that
// names none is likely a typo, and the intention meant is missing. A
// warning: an intention may be applied before its service starts.
func Intentions(m Mesh) []Finding {
	ix := newIndex(m)
	var out []Finding
	n := 0
	for _, r := range byName(m.Resources, v1.KindIntention) {
		n++
		for _, side := range []struct{ role, name string }{{"source", r.Intention.Source}, {"destination", r.Intention.Destination}} {
			if side.name == "*" || ix.known(side.name) {
				continue
			}
			out = append(out, Finding{Severity: Warning, Check: "intentions", Where: where(v1.KindIntention, r.Name),
				What: fmt.Sprintf("its %s %q is no service of the mesh (no Service resource, no instance)%s", side.role, side.name, suggest(side.name, ix)),
				Fix:  fmt.Sprintf("fix the name, or apply a Service named %s (or start it)", side.name)})
		}
	}
	if len(out) == 0 {
		out = append(out, ok("intentions", fmt.Sprintf("%d intentions, each naming known services", n)))
	}
	return out
}

// Upstreams checks every proxy's upstreams, as its last snapshot has
// them: one that names no service of the mesh, or has no endpoint, fails
// every call (an error).
func Upstreams(m Mesh) []Finding {
	ix := newIndex(m)
	ps := slices.Clone(m.Proxies)
	slices.SortFunc(ps, func(a, b v1.ProxyStatus) int { return cmp.Compare(a.Instance, b.Instance) })
	var out []Finding
	n := 0
	for _, p := range ps {
		for _, u := range p.Paths {
			n++
			at := "proxy " + p.Instance
			switch {
			case !ix.known(u.Service):
				out = append(out, Finding{Severity: Error, Check: "upstreams", Where: at,
					What: fmt.Sprintf("upstream %q is no service of the mesh (no Service resource, no instance): every call to it fails%s", u.Service, suggest(u.Service, ix)),
					Fix:  fmt.Sprintf("fix the proxy's --upstream %s:PORT, or start %s", u.Service, u.Service)})
			case u.Path == "none":
				what := fmt.Sprintf("upstream %s has no healthy endpoint: every call to it fails (503)", u.Service)
				if u.Unreachable != "" {
					what += " (" + u.Unreachable + ")"
				}
				out = append(out, Finding{Severity: Error, Check: "upstreams", Where: at, What: what,
					Fix: fmt.Sprintf("start %s or see why its instances are unhealthy (trellis get instances %s)", u.Service, u.Service)})
			}
		}
	}
	if len(out) == 0 {
		out = append(out, ok("upstreams", fmt.Sprintf("%d upstreams of connected proxies, each with a healthy endpoint", n)))
	}
	return out
}

// Gateways checks what each Gateway sends traffic to: an ingress route's
// service must have a healthy instance, a pass-through target's a healthy
// instance with an edge listener (which is what the gateway dials), or
// the gateway answers 503 / closes the connection. It also warns of a
// Gateway no gateway process serves.
func Gateways(m Mesh) []Finding {
	ix := newIndex(m)
	var out []Finding
	n := 0
	for _, r := range byName(m.Resources, v1.KindGateway) {
		n++
		at := where(v1.KindGateway, r.Name)
		seen := map[string]bool{}
		for _, l := range r.Gateway.Listeners {
			var svcs []string
			for _, rt := range l.Routes {
				svcs = append(svcs, rt.Service)
			}
			for _, t := range l.Targets {
				svcs = append(svcs, t.Service)
			}
			if l.DefaultService != "" {
				svcs = append(svcs, l.DefaultService)
			}
			passthrough := l.Protocol == v1.GatewayTLSPassthrough
			for _, svc := range svcs {
				if seen[svc+"/"+l.Protocol] {
					continue
				}
				seen[svc+"/"+l.Protocol] = true
				listener := fmt.Sprintf("listener %s:%d", l.Protocol, l.Port)
				if !ix.known(svc) {
					out = append(out, Finding{Severity: Error, Check: "gateways", Where: at,
						What: fmt.Sprintf("%s sends to %q, which is no service of the mesh%s", listener, svc, suggest(svc, ix)),
						Fix:  fmt.Sprintf("fix the service name in the Gateway, or start %s", svc)})
					continue
				}
				var keep func(v1.Instance) bool
				if passthrough {
					keep = func(i v1.Instance) bool { return i.EdgePort > 0 }
				}
				all, healthy := ix.healthy(svc, keep)
				switch {
				case passthrough && all == 0:
					out = append(out, Finding{Severity: Error, Check: "gateways", Where: at,
						What: fmt.Sprintf("%s: no instance of %s has an edge listener, so no target is ever healthy", listener, svc),
						Fix:  fmt.Sprintf("start %s's proxies with --edge-port (and --edge-mode passthrough when the app ends TLS)", svc)})
				case all == 0:
					out = append(out, Finding{Severity: Error, Check: "gateways", Where: at,
						What: fmt.Sprintf("%s: %s has no instance: its requests get 503", listener, svc),
						Fix:  fmt.Sprintf("start %s", svc)})
				case healthy == 0:
					out = append(out, Finding{Severity: Error, Check: "gateways", Where: at,
						What: fmt.Sprintf("%s: none of the %d targets of %s is healthy", listener, all, svc),
						Fix:  fmt.Sprintf("see why the app's health check fails (trellis get instances %s)", svc)})
				}
			}
		}
		if !ix.proxies[r.Name] {
			out = append(out, Finding{Severity: Warning, Check: "gateways", Where: at,
				What: "no gateway process is connected for it",
				Fix:  fmt.Sprintf("run trellis gateway --name %s (with a token for %s)", r.Name, r.Name)})
		}
	}
	if len(out) == 0 {
		out = append(out, ok("gateways", fmt.Sprintf("%d gateways, each served and with healthy targets", n)))
	}
	return out
}

// suggest returns ` (did you mean "x"?)` for the known service nearest to
// name (within two edits), or "".
func suggest(name string, ix index) string {
	var names []string
	for s := range ix.services {
		names = append(names, s)
	}
	for s := range ix.instances {
		names = append(names, s)
	}
	slices.Sort(names)
	if s := yamlfields.Suggest(name, names); s != "" && s != name {
		return fmt.Sprintf(" (did you mean %q?)", s)
	}
	return ""
}
