package inject

import (
	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Mesh returns the resources that let this service call its backends
// (trellis apply): one allow intention per backend in the manifest. Under
// a mesh whose default policy is deny, nothing else is reachable. The
// Service resource itself is left alone: its protocol and routes belong
// to whoever declared it, and an instance registers the service anyway.
func (p *Plan) Mesh() []v1.Resource {
	var res []v1.Resource
	for _, b := range p.Backends {
		res = append(res, v1.Resource{Kind: v1.KindIntention, Name: p.Service + "." + b.Service, Intention: &v1.IntentionSpec{
			Source: p.Service, Destination: b.Service, Action: v1.Allow,
		}})
	}
	return res
}
