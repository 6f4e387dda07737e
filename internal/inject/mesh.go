package inject

import (
	"slices"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Mesh returns the intentions that let this service call its backends:
// one allow intention per backend in the manifest. Under a mesh whose
// default policy is deny, nothing else is reachable.
func (p *Plan) Mesh() []v1.Resource {
	var res []v1.Resource
	for _, b := range p.Backends {
		res = append(res, v1.Resource{Kind: v1.KindIntention, Name: p.Service + "." + b.Service, Intention: &v1.IntentionSpec{
			Source: p.Service, Destination: b.Service, Action: v1.Allow,
		}})
	}
	return res
}

// Deployed is what the control plane holds of the service before this
// version is registered.
type Deployed struct {
	// Service and Route are nil when the mesh has none.
	Service, Route *v1.Resource
	// Versions are the versions of its registered instances.
	Versions []string
}

// Registration returns what registers this version with the mesh (trellis
// inject --apply): the Service if it is new, the backends' intentions,
// and a Route that keeps the versions serving now at their weights with
// this one at 0, so that its instances take no traffic until the canary
// step moves the weights. The first version of a service gets 100 %.
// A Service declared already is left alone: its protocol, limits and
// names belong to whoever declared it.
func (p *Plan) Registration(d Deployed) []v1.Resource {
	var res []v1.Resource
	protocol := p.Protocol
	if d.Service == nil {
		res = append(res, v1.Resource{Kind: v1.KindService, Name: p.Service, Service: &v1.ServiceSpec{
			Protocol: p.Protocol, Port: p.App.Port, Description: "registered by trellis inject",
		}})
	} else if d.Service.Service != nil {
		protocol = d.Service.Service.EffectiveProtocol()
	}
	res = append(res, p.Mesh()...)
	// Versions are weighed by the L7 proxies; a tcp service has no routes.
	if protocol == v1.ProtocolTCP {
		return res
	}
	if r := p.route(d); r != nil {
		res = append(res, *r)
	}
	return res
}

// route is the Route to apply, or nil if the current one needs no change.
func (p *Plan) route(d Deployed) *v1.Resource {
	var old []string // the versions serving now, this one excepted
	for _, v := range d.Versions {
		if v != p.Version && v != "" && !slices.Contains(old, v) {
			old = append(old, v)
		}
	}
	slices.Sort(old)
	// evenly splits 100 among the old versions, this one at 0; or gives
	// this one 100 when it is the first.
	evenly := func() []v1.RouteTarget {
		if len(old) == 0 {
			return []v1.RouteTarget{{Version: p.Version, Weight: 100}}
		}
		var ts []v1.RouteTarget
		for i, v := range old {
			w := 100 / len(old)
			if i == 0 {
				w += 100 % len(old)
			}
			ts = append(ts, v1.RouteTarget{Version: v, Weight: w})
		}
		return append(ts, v1.RouteTarget{Version: p.Version, Weight: 0})
	}

	if d.Route == nil || d.Route.Route == nil {
		return &v1.Resource{Kind: v1.KindRoute, Name: p.Service, Route: &v1.RouteSpec{Rules: []v1.RouteRule{
			{Name: "default", Targets: evenly()},
		}}}
	}
	spec := *d.Route.Route
	spec.Rules = slices.Clone(spec.Rules)
	changed := false
	for i, rule := range spec.Rules {
		switch {
		case len(rule.Targets) == 0:
			// "Every version alike" would send this version traffic as
			// soon as it registers: pin the rule to the serving versions.
			if len(old) == 0 {
				continue
			}
			spec.Rules[i].Targets = evenly()
		case !slices.ContainsFunc(rule.Targets, func(t v1.RouteTarget) bool { return t.Version == p.Version }):
			spec.Rules[i].Targets = append(slices.Clone(rule.Targets), v1.RouteTarget{Version: p.Version, Weight: 0})
		default:
			continue
		}
		changed = true
	}
	if !changed {
		return nil
	}
	r := *d.Route
	r.Route = &spec
	return &r
}
