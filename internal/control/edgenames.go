package control

import (
	"fmt"
	"maps"
	"sort"
	"strings"

	"golang.org/x/net/publicsuffix"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/topology"
)

// allowedEdgeNames returns the DNS names the mesh CA may put in service's
// edge certificates: its Service resource's spec.dnsNames and, for a
// gateway, the names of its https listeners that take certificates from
// the mesh. Both are written by an admin, never by the service's token.
func allowedEdgeNames(m *topology.Mesh, service string) []string {
	var names []string
	if s := m.Services[service]; s != nil {
		names = append(names, s.DNSNames...)
	}
	if g := m.Gateways[service]; g != nil {
		for _, l := range g.Listeners {
			if l.TLS != nil && l.TLS.EffectiveSource() == v1.CertMesh {
				names = append(names, l.TLS.DNSNames...)
			}
		}
	}
	return names
}

// checkEdgeNames says which requested name, if any, allowed does not cover.
func checkEdgeNames(allowed, names []string, service string) error {
	for _, n := range names {
		ok := false
		for _, a := range allowed {
			if edgeNameCovers(strings.ToLower(a), strings.ToLower(n)) {
				ok = true
				break
			}
		}
		if !ok {
			return fmt.Errorf("DNS name %q is not allowed for service %s: list it in the Service's spec.dnsNames (allowed now: %v)", n, service, allowed)
		}
	}
	return nil
}

// edgeNameCovers: a name is covered by itself, and a single label under
// "*.domain" by that wildcard; a wildcard only by the same wildcard.
func edgeNameCovers(pattern, name string) bool {
	if pattern == name {
		return true
	}
	rest, ok := strings.CutPrefix(pattern, "*.")
	if !ok || strings.HasPrefix(name, "*.") {
		return false
	}
	label, domain, found := strings.Cut(name, ".")
	return found && label != "" && domain == rest
}

// edgeClaims returns, per service, the edge names it may be issued: its
// Service's spec.dnsNames and its Gateway's mesh-sourced listener names.
func edgeClaims(m *topology.Mesh) map[string][]string {
	out := map[string][]string{}
	for name := range m.Services {
		out[name] = allowedEdgeNames(m, name)
	}
	for name := range m.Gateways {
		out[name] = allowedEdgeNames(m, name)
	}
	return out
}

// edgeOverlap says whether a name (or wildcard) of one service covers, or
// is covered by, one of another's: then both could be issued a certificate
// a client would accept for the same host.
func edgeOverlap(a, b string) bool {
	a, b = strings.ToLower(a), strings.ToLower(b)
	// Two different one-label wildcards never cover a common name, so
	// coverage either way is the whole test.
	return edgeNameCovers(a, b) || edgeNameCovers(b, a)
}

// checkEdgeClaims reports every name that two services would claim once
// the Services and Gateways in batch replace the stored ones of the same
// name.
func checkEdgeClaims(stored *topology.Mesh, batch []v1.Resource) []string {
	claims := edgeClaims(batchMesh(stored, batch))
	services := sortedKeys(claims)
	var errs []string
	for i, a := range services {
		for _, b := range services[i+1:] {
			for _, na := range claims[a] {
				for _, nb := range claims[b] {
					if edgeOverlap(na, nb) {
						errs = append(errs, fmt.Sprintf("edge name %q of %s overlaps %q of %s: a name may belong to one service only", na, a, nb, b))
					}
				}
			}
		}
	}
	return errs
}

// checkPublicSuffix refuses, beyond v1.ValidateEdgeName, what only the
// Public Suffix List tells: a wildcard directly under a public suffix
// (*.co.uk, *.github.io, and under a suffix the list does not know, such
// as *.internal), and a name that is itself an ICANN public suffix.
func checkPublicSuffix(name string) error {
	n := strings.ToLower(name)
	if base, ok := strings.CutPrefix(n, "*."); ok {
		if ps, _ := publicsuffix.PublicSuffix(base); ps == base {
			return fmt.Errorf("%q: a wildcard directly under the public suffix %q would cover every domain in it", name, base)
		}
		return nil
	}
	if ps, icann := publicsuffix.PublicSuffix(n); ps == n && icann {
		return fmt.Errorf("%q is a public suffix, not a domain anyone holds", name)
	}
	return nil
}

// checkEdgeSuffixes applies checkPublicSuffix to every edge name the
// Services and Gateways in batch claim.
func checkEdgeSuffixes(batch []v1.Resource) []string {
	return checkBatchEdgeNames(batch, checkPublicSuffix)
}

// checkEdgeServerNames refuses edge names that cover the API's names.
func (s *Server) checkEdgeServerNames(batch []v1.Resource) []string {
	return checkBatchEdgeNames(batch, s.checkServerNames)
}

// checkBatchEdgeNames applies check to every edge name the Services and
// Gateways in batch claim.
func checkBatchEdgeNames(batch []v1.Resource, check func(string) error) []string {
	var errs []string
	claims := edgeClaims(batchMesh(&topology.Mesh{}, batch))
	for _, svc := range sortedKeys(claims) {
		for _, n := range claims[svc] {
			if err := check(n); err != nil {
				errs = append(errs, fmt.Sprintf("edge name of %s: %v", svc, err))
			}
		}
	}
	return errs
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// batchMesh returns base's Services and Gateways with those in batch
// applied over them; base is not changed.
func batchMesh(base *topology.Mesh, batch []v1.Resource) *topology.Mesh {
	m := &topology.Mesh{Services: maps.Clone(base.Services), Gateways: maps.Clone(base.Gateways)}
	if m.Services == nil {
		m.Services = map[string]*v1.ServiceSpec{}
	}
	if m.Gateways == nil {
		m.Gateways = map[string]*v1.GatewaySpec{}
	}
	for i := range batch {
		switch r := &batch[i]; r.Kind {
		case v1.KindService:
			m.Services[r.Name] = r.Service
		case v1.KindGateway:
			m.Gateways[r.Name] = r.Gateway
		}
	}
	return m
}
