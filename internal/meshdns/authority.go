package meshdns

import (
	"cmp"
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/topology"
)

// AuthorityConfig configures an Authority. The zero value works.
type AuthorityConfig struct {
	// Rate is the queries a second each client may ask (default
	// DefaultRate; negative: no limit), Burst how many above it at once.
	Rate  float64
	Burst int
	// Logger; nil discards.
	Logger *slog.Logger
	// Metrics; nil counts nothing.
	Metrics *Metrics
}

// Authority answers the mesh's names for callers outside the mesh: a
// service's name with the healthy instances' edge listeners, a name a
// Gateway serves with that gateway's instances and listener port. It
// answers only names under the mesh's domains (REFUSED for the rest) and
// never recurses: it is no open resolver.
type Authority struct {
	guard
	zone atomic.Pointer[zone]
}

// NewAuthority returns an authority with no names until Update.
func NewAuthority(cfg AuthorityConfig) *Authority {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Authority{}
	a.guard = guard{answer: a.answer, limits: newClientLimits(cfg.Rate, cfg.Burst), metrics: cfg.Metrics, log: log}
	return a
}

// Update replaces the names answered with those of m.
func (a *Authority) Update(m *topology.Mesh) { a.zone.Store(authorityZone(m)) }

func (a *Authority) answer(_ context.Context, req, reply *dns.Msg, _ bool) string {
	z := a.zone.Load()
	if z == nil {
		reply.Rcode = dns.RcodeRefused
		return resultRefused
	}
	q := req.Question[0]
	n, apex, res := z.lookup(q.Name)
	if res == outside {
		reply.Rcode = dns.RcodeRefused
		return resultRefused
	}
	return z.fill(reply, q, n, apex, res)
}

// endpoint is an address and port a caller outside the mesh dials.
type endpoint struct {
	addr netip.Addr
	port uint16
}

// authorityZone builds the authority's names from m.
func authorityZone(m *topology.Mesh) *zone {
	z := newZone(topology.DNSDomains(m), topology.DNSHostnames(m), uint32(time.Now().Unix()))
	// Every service, declared or only registered, answers at its names.
	services := map[string]bool{}
	for s := range m.Services {
		services[s] = true
	}
	for s := range m.Instances {
		services[s] = true
	}
	names := map[string][]endpoint{}
	for s := range services {
		var eps []endpoint
		for _, in := range m.Instances[s] {
			if a, err := netip.ParseAddr(in.Address); err == nil && in.Healthy && in.EdgePort > 0 && in.EdgePort <= 65535 {
				eps = append(eps, endpoint{a.Unmap(), uint16(in.EdgePort)})
			}
		}
		for _, n := range v1.MeshNames(m.Mesh, s, m.Services[s]) {
			names[n] = eps
		}
	}
	// A name a Gateway serves leads to the gateway, whatever service's it
	// is: callers outside the mesh reach the service through it.
	served := map[string][]endpoint{}
	for g, spec := range m.Gateways {
		for _, l := range spec.Listeners {
			var hosts []string
			switch l.Protocol {
			case v1.GatewayHTTP, v1.GatewayHTTPS:
				for _, r := range l.Routes {
					hosts = append(hosts, r.Host)
				}
			case v1.GatewayTLSPassthrough:
				for _, t := range l.Targets {
					hosts = append(hosts, t.SNI)
				}
			}
			for _, h := range hosts {
				h = strings.ToLower(strings.TrimSuffix(h, "."))
				if h == "" || strings.Contains(h, "*") || z.apex(h) == "" || l.Port <= 0 || l.Port > 65535 {
					continue
				}
				for _, in := range m.Instances[g] {
					if a, err := netip.ParseAddr(in.Address); err == nil && in.Healthy {
						served[h] = append(served[h], endpoint{a.Unmap(), uint16(l.Port)})
					}
				}
				if _, ok := served[h]; !ok {
					served[h] = nil // served, by no healthy instance now
				}
			}
		}
	}
	for h, eps := range served {
		names[h] = eps
	}
	for name, eps := range names {
		n := z.add(name)
		if n == nil {
			continue
		}
		slices.SortFunc(eps, func(a, b endpoint) int {
			return cmp.Or(a.addr.Compare(b.addr), cmp.Compare(a.port, b.port))
		})
		for _, ep := range eps {
			n.addAddr(ep.addr)
			// SRV targets must be names: one per address, under the
			// service's name, with that address.
			prefix := "ip-" + strings.NewReplacer(".", "-", ":", "-").Replace(ep.addr.String())
			if len(prefix)+1+len(name) > 253 {
				continue
			}
			n.addSRV(srvTarget{prefix: prefix, port: ep.port})
			z.addExact(prefix + "." + name).addAddr(ep.addr)
		}
	}
	return z
}
