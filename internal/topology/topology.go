package topology

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/identity"
)

// Snapshot is everything one proxy needs, applied atomically.
type Snapshot struct {
	// Version identifies the content: equal content, equal version, on every
	// control plane server.
	Version string `json:"version"`
	// Service is the proxy's own service, and Protocol how its app speaks.
	Service  string `json:"service"`
	Protocol string `json:"protocol"`
	// TrustDomain and RootsPEM are the trust bundle peers are verified with.
	TrustDomain string `json:"trustDomain"`
	RootsPEM    string `json:"roots"`
	// MTLS is the mesh's mode, strict or permissive.
	MTLS string `json:"mtls"`
	// Inbound authorizes callers of Service.
	Inbound authz.Policy `json:"inbound"`
	// Upstreams are the services the proxy has listeners for, by name.
	Upstreams []Upstream `json:"upstreams"`
	// Gateway is the Gateway resource named like Service, for a gateway;
	// its services are among Upstreams.
	Gateway *v1.GatewaySpec `json:"gateway,omitempty"`

	// DNSDomains are the Mesh's DNS domains, lowercase and sorted: the
	// zones the mesh answers for. The sidecar's resolver answers NXDOMAIN
	// for a name at or under one of them that is no upstream's, and
	// forwards every name under none of them and not in DNSHostnames.
	DNSDomains []string `json:"dnsDomains,omitempty"`
	// NetworkTargets, for a network gateway, maps the SNI of each healthy
	// instance in the gateway's network (SNI) to its public mTLS listener
	// ("address:port"): where the gateway forwards a stream that names it.
	NetworkTargets map[string]string `json:"networkTargets,omitempty"`

	// DNSHostnames are every Service's hostnames (spec.hostnames),
	// lowercase and sorted: names, not zones. The sidecar's resolver
	// answers NXDOMAIN for one that is no upstream's, and forwards the
	// names under it: a Service named api.example.com takes no other
	// name of example.com from any app.
	DNSHostnames []string `json:"dnsHostnames,omitempty"`
}

// Upstream is one destination service and its healthy endpoints.
type Upstream struct {
	Service   string     `json:"service"`
	Protocol  string     `json:"protocol"`
	Endpoints []Endpoint `json:"endpoints"`
	// Route, for HTTP protocols, routes requests to versions.
	Route *v1.RouteSpec `json:"route,omitempty"`
	// Limits are the service's circuit breakers.
	Limits *v1.ServiceLimits `json:"limits,omitempty"`

	// Hostnames are the upstream's DNS names: <service>.<domain> for each
	// mesh domain, and its Service's hostnames; lowercase, sorted.
	Hostnames []string `json:"hostnames,omitempty"`
	// Port is the Service's port (spec.port), 0 when it declares none.
	Port int `json:"port,omitempty"`
	// Unreachable says why endpoints the proxy would use are missing:
	// they are in networks whose network gateways are all down. The
	// outbound's 503 and its log carry it.
	Unreachable string `json:"unreachable,omitempty"`
}

// Endpoint is one healthy instance's proxy.
type Endpoint struct {
	Instance string `json:"instance"`
	Address  string `json:"address"`
	Port     int    `json:"port"`
	// EdgePort is the instance's edge listener, which tls-passthrough
	// gateways dial; 0 if it has none.
	EdgePort int    `json:"edgePort,omitempty"`
	Version  string `json:"version,omitempty"`
	Network  string `json:"network,omitempty"`

	// Gateways are the "ip:port" of the healthy network gateways of the
	// endpoint's network to dial for it, sorted; empty means dial
	// Address:Port directly.
	Gateways []string `json:"gateways,omitempty"`
	// SNI is the name the network gateway routes by (SNI), set with
	// Gateways.
	SNI string `json:"sni,omitempty"`
}

// Upstream returns the named upstream, or nil.
func (s *Snapshot) Upstream(service string) *Upstream {
	for i := range s.Upstreams {
		if s.Upstreams[i].Service == service {
			return &s.Upstreams[i]
		}
	}
	return nil
}

// Validate checks what a proxy relies on before applying a snapshot.
func (s *Snapshot) Validate() error {
	var errs []error
	if err := identity.ValidateServiceName(s.Service); err != nil {
		errs = append(errs, fmt.Errorf("service: %w", err))
	}
	if err := identity.ValidateTrustDomain(s.TrustDomain); err != nil {
		errs = append(errs, fmt.Errorf("trustDomain: %w", err))
	}
	if s.RootsPEM == "" {
		errs = append(errs, errors.New("roots: empty trust bundle"))
	}
	if s.MTLS != v1.MTLSStrict && s.MTLS != v1.MTLSPermissive {
		errs = append(errs, fmt.Errorf("mtls: %q is not a mode", s.MTLS))
	}
	for _, u := range s.Upstreams {
		for _, e := range u.Endpoints {
			if e.Address == "" || e.Port <= 0 || e.Port > 65535 {
				errs = append(errs, fmt.Errorf("upstream %s: endpoint %s has address %q port %d", u.Service, e.Instance, e.Address, e.Port))
			}
			for _, g := range e.Gateways {
				if err := validIPPort(g); err != nil {
					errs = append(errs, fmt.Errorf("upstream %s: endpoint %s: gateway %w", u.Service, e.Instance, err))
				}
			}
			// The gateway routes by the SNI alone: one naming another
			// instance or service would take the stream there.
			if want := NetworkSNI(e.Instance, u.Service); len(e.Gateways) > 0 && e.SNI != want {
				errs = append(errs, fmt.Errorf("upstream %s: endpoint %s through gateways: sni %q, want %q", u.Service, e.Instance, e.SNI, want))
			}
		}
	}
	for sni, addr := range s.NetworkTargets {
		if _, _, ok := ParseNetworkSNI(sni); !ok {
			errs = append(errs, fmt.Errorf("networkTargets: %q is not a network SNI name", sni))
		}
		if err := validIPPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("networkTargets: %s: %w", sni, err))
		} else if err := forwardable(netip.MustParseAddrPort(addr).Addr().Unmap()); err != nil {
			errs = append(errs, fmt.Errorf("networkTargets: %s: %w", sni, err))
		}
	}
	return errors.Join(errs...)
}

// validIPPort checks an address a proxy dials as it is: an IP and a port
// (a host name would be looked up, port 0 is no port).
func validIPPort(s string) error {
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return fmt.Errorf("%q: not an IP address and port", s)
	}
	return nil
}

// Mesh is the state of the whole mesh, as the control plane read it.
type Mesh struct {
	TrustDomain string
	RootsPEM    string
	Mesh        *v1.MeshSpec
	Services    map[string]*v1.ServiceSpec
	Intentions  []v1.IntentionSpec
	// Routes by destination service.
	Routes map[string]*v1.RouteSpec
	// Instances by service.
	Instances map[string][]v1.Instance
	// Gateways by name.
	Gateways map[string]*v1.GatewaySpec
}

// Proxy is what a proxy told the control plane about itself.
type Proxy struct {
	Service   string
	Upstreams []string

	// Network is the proxy's network; empty is v1.DefaultNetwork.
	Network string
}

// Compute returns the snapshot for p.
func Compute(m *Mesh, p Proxy) *Snapshot {
	s, _ := ComputeSplit(m, p)
	return s
}

// ComputeSplit returns the snapshot for p and its resources.
func ComputeSplit(m *Mesh, p Proxy) (*Snapshot, *Resources) {
	s := &Snapshot{
		Service:     p.Service,
		Protocol:    m.Services[p.Service].EffectiveProtocol(),
		TrustDomain: m.TrustDomain,
		RootsPEM:    m.RootsPEM,
		MTLS:        m.Mesh.EffectiveMTLS(),
		Inbound:     authz.ForDestination(p.Service, m.Mesh.EffectiveDefaultPolicy(), m.Intentions),
		Upstreams:   []Upstream{},
	}
	ups := append([]string(nil), p.Upstreams...)
	if gw := m.Gateways[p.Service]; gw != nil {
		s.Gateway = gw
		ups = append(ups, gw.Services()...)
	}
	sort.Strings(ups)
	nets := networkGateways(m)
	local := v1.EffectiveNetwork(p.Network)
	if s.Gateway != nil {
		s.NetworkTargets = networkTargets(m, p.Service, local)
	}
	for i, name := range ups {
		if i > 0 && ups[i-1] == name {
			continue
		}
		u := Upstream{Service: name, Protocol: m.Services[name].EffectiveProtocol(), Endpoints: []Endpoint{}}
		if u.Protocol != v1.ProtocolTCP {
			u.Route = m.Routes[name]
		}
		if svc := m.Services[name]; svc != nil {
			u.Limits = svc.Limits
			u.Port = svc.Port
		}
		u.Hostnames = sortedNames(v1.MeshNames(m.Mesh, name, m.Services[name]))
		u.Endpoints, u.Unreachable = endpoints(m.Instances[name], nets, local, m.Services[name].EffectiveLocality())
		sort.Slice(u.Endpoints, func(i, j int) bool { return u.Endpoints[i].Instance < u.Endpoints[j].Instance })
		s.Upstreams = append(s.Upstreams, u)
	}
	s.DNSDomains = DNSDomains(m)
	s.DNSHostnames = DNSHostnames(m)
	// Every value in s encodes: Split cannot fail here.
	r, _ := Split(s)
	s.Version = r.Version
	return s, r
}

// DNSDomains returns the zones the mesh answers for, its DNS domains,
// lowercase, sorted, each once.
func DNSDomains(m *Mesh) []string {
	if m.Mesh == nil || m.Mesh.DNS == nil {
		return nil
	}
	return sortedNames(m.Mesh.DNS.Domains)
}

// DNSHostnames returns every Service's hostnames, lowercase, sorted, each
// once: names the mesh answers, not zones.
func DNSHostnames(m *Mesh) []string {
	var names []string
	for _, svc := range m.Services {
		if svc != nil {
			names = append(names, svc.Hostnames...)
		}
	}
	return sortedNames(names)
}

// sortedNames lowercases names, sorts them and drops repeats; nil when
// there are none.
func sortedNames(names []string) []string {
	if len(names) == 0 {
		return nil
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strings.ToLower(n)
	}
	sort.Strings(out)
	return slices.Compact(out)
}
