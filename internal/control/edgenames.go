package control

import (
	"fmt"
	"strings"

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
