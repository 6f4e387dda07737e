package xds

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/topology"
)

// Incremental pushes. A snapshot is split into resources (topology.Split):
// its base and one resource per upstream. A proxy that lists FeaturePatch
// in its node's client features may be sent, instead of the whole
// snapshot, a patch: the resources that changed since the version it
// holds, and the upstreams that went. The response keeps the snapshot's
// type URL and version; its one resource is of PatchType. The proxy
// applies a patch only on the version it names (From), and only if the
// result's content hashes to the announced version; otherwise it rejects
// it (NACK), keeps its snapshot, and the server sends the whole snapshot.
const (
	PatchType    = "type.trellis.dev/trellis.v1.SnapshotPatch"
	FeaturePatch = "dev.trellis.snapshot-patch"
)

// maxPatchUpstreams bounds the upstreams a patch may name: a snapshot has
// one per service of the mesh at most.
const maxPatchUpstreams = 100_000

// patchWire is a patch's JSON.
type patchWire struct {
	// From is the version the patch applies to; Version the result's.
	From    string `json:"from"`
	Version string `json:"version"`
	// Base, when the base changed, replaces it.
	Base json.RawMessage `json:"base,omitempty"`
	// Upstreams replace (or add) the upstreams of the same service.
	Upstreams []json.RawMessage `json:"upstreams,omitempty"`
	// Removed names the upstreams that went.
	Removed []string `json:"removed,omitempty"`
}

// FullResource returns r's whole snapshot as a response resource.
func FullResource(r *topology.Resources) *anypb.Any {
	return &anypb.Any{TypeUrl: SnapshotType, Value: r.Full()}
}

// PatchResource returns the patch from a snapshot split as from to one
// split as to, or false when it would carry as much as the whole snapshot
// (the base and every upstream changed).
func PatchResource(from, to *topology.Resources) (*anypb.Any, bool) {
	p := patchWire{From: from.Version, Version: to.Version}
	if from.Base.Hash != to.Base.Hash {
		p.Base = to.Base.JSON
	}
	had := make(map[string]string, len(from.Upstreams))
	for _, u := range from.Upstreams {
		had[u.Name] = u.Hash
	}
	for _, u := range to.Upstreams {
		if h, ok := had[u.Name]; !ok || h != u.Hash {
			p.Upstreams = append(p.Upstreams, u.JSON)
		}
		delete(had, u.Name)
	}
	if p.Base != nil && len(p.Upstreams) == len(to.Upstreams) {
		return nil, false
	}
	for name := range had {
		p.Removed = append(p.Removed, name)
	}
	slices.Sort(p.Removed)
	b, err := json.Marshal(p)
	if err != nil {
		// Resources are JSON that Split made: a bug, and the whole
		// snapshot is still right.
		return nil, false
	}
	return &anypb.Any{TypeUrl: PatchType, Value: b}, true
}

// Respond wraps a resource (FullResource or PatchResource) in a response of
// the given snapshot version. The resource may be shared by responses on
// many streams: it is only read.
func Respond(version, nonce string, res *anypb.Any) *discoveryv3.DiscoveryResponse {
	return &discoveryv3.DiscoveryResponse{VersionInfo: version, TypeUrl: SnapshotType, Nonce: nonce, Resources: []*anypb.Any{res}}
}

// Decode returns the snapshot a response carries: a whole one, or cur
// patched. The result is validated; cur is not modified, and the result
// shares no value a proxy modifies when applying it (its inbound policy
// is decoded anew).
func Decode(resp *discoveryv3.DiscoveryResponse, cur *topology.Snapshot) (*topology.Snapshot, error) {
	if resp.GetTypeUrl() != SnapshotType || len(resp.GetResources()) != 1 {
		return nil, fmt.Errorf("response of type %q with %d resources, want one %s", resp.GetTypeUrl(), len(resp.GetResources()), SnapshotType)
	}
	if resp.Resources[0].GetTypeUrl() != PatchType {
		return SnapshotFrom(resp)
	}
	s, err := applyPatch(resp.Resources[0].GetValue(), cur)
	if err != nil {
		return nil, err
	}
	if s.Version != resp.GetVersionInfo() {
		return nil, fmt.Errorf("patch version %q differs from response version %q", s.Version, resp.GetVersionInfo())
	}
	return s, nil
}

// applyPatch decodes a patch and applies it to cur.
func applyPatch(b []byte, cur *topology.Snapshot) (*topology.Snapshot, error) {
	var p patchWire
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("decode snapshot patch: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode snapshot patch: data after the patch")
	}
	if cur == nil {
		return nil, fmt.Errorf("snapshot patch from version %q, but no snapshot to patch", p.From)
	}
	if p.From != cur.Version {
		return nil, fmt.Errorf("snapshot patch from version %q, but the current version is %q", p.From, cur.Version)
	}
	if n := len(p.Upstreams) + len(p.Removed); n > maxPatchUpstreams {
		return nil, fmt.Errorf("snapshot patch names %d upstreams, over the limit of %d", n, maxPatchUpstreams)
	}
	// The base is decoded anew even when it did not change: applying a
	// snapshot compiles its inbound policy in place, and the current one
	// is in use.
	base := p.Base
	if base == nil {
		r, err := topology.Split(&topology.Snapshot{
			Service: cur.Service, Protocol: cur.Protocol, TrustDomain: cur.TrustDomain, RootsPEM: cur.RootsPEM, MTLS: cur.MTLS,
			Inbound: cur.Inbound, Gateway: cur.Gateway, DNSDomains: cur.DNSDomains, NetworkTargets: cur.NetworkTargets, DNSHostnames: cur.DNSHostnames,
		})
		if err != nil {
			return nil, err
		}
		base = r.Base.JSON
	}
	s, err := topology.DecodeBase(base)
	if err != nil {
		return nil, err
	}
	ups := map[string]topology.Upstream{}
	for _, u := range cur.Upstreams {
		ups[u.Service] = u
	}
	replaced := map[string]bool{}
	for i, raw := range p.Upstreams {
		var u topology.Upstream
		if err := json.Unmarshal(raw, &u); err != nil {
			return nil, fmt.Errorf("decode snapshot patch: upstreams[%d]: %w", i, err)
		}
		if err := identity.ValidateServiceName(u.Service); err != nil {
			return nil, fmt.Errorf("snapshot patch: upstreams[%d]: service: %w", i, err)
		}
		if replaced[u.Service] {
			return nil, fmt.Errorf("snapshot patch: upstream %s given twice", u.Service)
		}
		replaced[u.Service] = true
		ups[u.Service] = u
	}
	for _, name := range p.Removed {
		if replaced[name] {
			return nil, fmt.Errorf("snapshot patch: upstream %s both replaced and removed", name)
		}
		if _, ok := ups[name]; !ok {
			return nil, fmt.Errorf("snapshot patch: removes upstream %q, which the snapshot does not have", name)
		}
		delete(ups, name)
	}
	s.Upstreams = make([]topology.Upstream, 0, len(ups))
	for _, u := range ups {
		s.Upstreams = append(s.Upstreams, u)
	}
	slices.SortFunc(s.Upstreams, func(a, b topology.Upstream) int { return strings.Compare(a.Service, b.Service) })
	r, err := topology.Split(s)
	if err != nil {
		return nil, err
	}
	if r.Version != p.Version {
		return nil, fmt.Errorf("patched snapshot's content has version %s, the patch says %s (from %s)", r.Version, p.Version, p.From)
	}
	s.Version = r.Version
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("invalid snapshot: %w", err)
	}
	return s, nil
}
