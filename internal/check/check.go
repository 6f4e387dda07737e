package check

import (
	"cmp"
	"slices"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Severity of a finding.
type Severity string

// Severities, from harmless to broken: an error means something fails
// now (requests, certificates, a proxy's configuration); a warning, that
// something will, or may.
const (
	OK      Severity = "ok"
	Warning Severity = "warning"
	Error   Severity = "error"
)

// Finding is one result of a check.
type Finding struct {
	// Severity is ok, warning or error.
	Severity Severity `json:"severity"`
	// Check names the rule that made it: server, ca, rotation, proxies,
	// routes, intentions, upstreams, gateways, context, files.
	Check string `json:"check"`
	// What happened, in one line.
	What string `json:"what"`
	// Where: a resource (Kind/name), a proxy (proxy INSTANCE) or a file.
	Where string `json:"where,omitempty"`
	// Fix says what to do; empty for ok findings.
	Fix string `json:"fix,omitempty"`
}

// Mesh is what the API shows of a mesh, as the rules read it.
type Mesh struct {
	// Now is the time expiries are measured against.
	Now time.Time
	// Resources are every stored resource, all kinds together.
	Resources []v1.Resource
	// Instances are the registered instances.
	Instances []v1.Instance
	// Proxies are the connected proxies and gateways.
	Proxies []v1.ProxyStatus
	// Roots is the trust bundle, with Certs describing each root.
	Roots v1.Roots
	// CAChain are the certificates between the signing CA and the roots
	// (an imported intermediate), as the server presents them; empty when
	// the CA is itself a root.
	CAChain []Cert
	// Rotation is where the root rotation stands; its zero value is none.
	Rotation v1.Rotation
}

// Cert is a certificate as the rules read it.
type Cert struct {
	Subject  string
	NotAfter time.Time
}

// Limits are the thresholds of the rules; the zero value means defaults.
type Limits struct {
	// ExpiryWarning is how close to its expiry a CA or root certificate
	// is reported (default 30 days).
	ExpiryWarning time.Duration
	// BehindError is how long a proxy may be seen behind its snapshot,
	// without a rejection, before that is an error (default 15s; the
	// proxy status the API shows is up to 5 s old).
	BehindError time.Duration
}

func (l Limits) expiryWarning() time.Duration {
	return cmp.Or(l.ExpiryWarning, 30*24*time.Hour)
}

func (l Limits) behindError() time.Duration {
	return cmp.Or(l.BehindError, 15*time.Second)
}

// All runs every rule over the mesh. behind maps each proxy instance seen
// behind its snapshot to how long it has been seen so, without progress
// (the caller watches; see Proxies).
func All(m Mesh, behind map[string]time.Duration, l Limits) []Finding {
	var out []Finding
	out = append(out, Certificates(m, l)...)
	out = append(out, Rotation(m)...)
	out = append(out, Proxies(m, behind, l)...)
	out = append(out, Routes(m)...)
	out = append(out, Intentions(m)...)
	out = append(out, Upstreams(m)...)
	out = append(out, Gateways(m)...)
	return out
}

// Resources runs the cross-resource rules (routes, intentions, gateways)
// on resources about to be applied over the mesh's stored ones, and
// returns the findings about those resources only: what `trellis apply`
// warns of.
func Resources(applied []v1.Resource, m Mesh) []Finding {
	key := func(r v1.Resource) string { return r.Kind + "/" + r.Name }
	mine := map[string]bool{}
	for _, r := range applied {
		mine[key(r)] = true
	}
	merged := slices.Clone(applied)
	for _, r := range m.Resources {
		if !mine[key(r)] {
			merged = append(merged, r)
		}
	}
	m.Resources = merged
	var out []Finding
	for _, f := range slices.Concat(Routes(m), Intentions(m), Gateways(m)) {
		if f.Severity != OK && mine[f.Where] {
			out = append(out, f)
		}
	}
	return out
}

// Worst returns the most severe severity of findings (OK for none).
func Worst(fs []Finding) Severity {
	w := OK
	for _, f := range fs {
		switch {
		case f.Severity == Error:
			return Error
		case f.Severity == Warning:
			w = Warning
		}
	}
	return w
}

// Count returns how many findings have severity s.
func Count(fs []Finding, s Severity) int {
	n := 0
	for _, f := range fs {
		if f.Severity == s {
			n++
		}
	}
	return n
}

// index is what several rules look up: resources by kind and name,
// instances by service.
type index struct {
	services  map[string]*v1.ServiceSpec
	gateways  map[string]*v1.GatewaySpec
	instances map[string][]v1.Instance
	proxies   map[string]bool // services with a connected proxy
}

func newIndex(m Mesh) index {
	ix := index{services: map[string]*v1.ServiceSpec{}, gateways: map[string]*v1.GatewaySpec{}, instances: map[string][]v1.Instance{}, proxies: map[string]bool{}}
	for _, r := range m.Resources {
		switch r.Kind {
		case v1.KindService:
			ix.services[r.Name] = r.Service
		case v1.KindGateway:
			ix.gateways[r.Name] = r.Gateway
		}
	}
	for _, i := range m.Instances {
		ix.instances[i.Service] = append(ix.instances[i.Service], i)
	}
	for _, p := range m.Proxies {
		ix.proxies[p.Service] = true
	}
	return ix
}

// known reports whether name is a service of the mesh: declared by a
// Service resource, registered by an instance, or a Gateway's identity.
func (ix index) known(name string) bool {
	_, declared := ix.services[name]
	_, gateway := ix.gateways[name]
	return declared || gateway || len(ix.instances[name]) > 0 || ix.proxies[name]
}

// healthy counts the healthy instances of service that match keep.
func (ix index) healthy(service string, keep func(v1.Instance) bool) (all, healthy int) {
	for _, i := range ix.instances[service] {
		if keep != nil && !keep(i) {
			continue
		}
		all++
		if i.Healthy {
			healthy++
		}
	}
	return all, healthy
}

func byName(rs []v1.Resource, kind string) []v1.Resource {
	var out []v1.Resource
	for _, r := range rs {
		if r.Kind == kind {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b v1.Resource) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

func where(kind, name string) string { return kind + "/" + name }

func ok(check, what string) Finding { return Finding{Severity: OK, Check: check, What: what} }
