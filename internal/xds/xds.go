package xds

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
	"unicode"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/structpb"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/topology"
)

// SnapshotType is the type URL of a Trellis snapshot resource. Its value is
// the JSON of topology.Snapshot.
const SnapshotType = "type.trellis.dev/trellis.v1.Snapshot"

// Registration is what a proxy tells the control plane about its instance.
type Registration struct {
	// The json names are what the proxy's /config shows (camelCase, as
	// the rest of the API); the wire is the node metadata (Node).
	Instance  string   `json:"instance"`  // unique instance ID
	Service   string   `json:"service"`   // service name
	Version   string   `json:"version"`   // version label
	Address   string   `json:"address"`   // address of the public mTLS listener, as peers dial it
	Port      int      `json:"port"`      // public mTLS port
	EdgePort  int      `json:"edgePort"`  // edge listener's port, 0 if none
	Network   string   `json:"network"`   // network name; empty (older proxies) is v1.DefaultNetwork
	Upstreams []string `json:"upstreams"` // services the proxy has listeners for
	Healthy   bool     `json:"healthy"`   // the app's last health check result
	// Claim is a secret the proxy makes at start and keeps in memory:
	// a server lets a stream take over a live registration of the same
	// instance (a proxy that moved servers) only with the claim that
	// made it. 32 to 128 lowercase hex digits; empty from proxies that
	// predate it, whose registrations are never taken over. Never
	// rendered: the proxy's /config shows its registration as JSON.
	Claim string `json:"-"`

	// Where the proxy runs and what it holds, for people (the dashboard's
	// Nodes page): no snapshot depends on them.
	NodeInfo
}

// NodeInfo is the part of a registration that describes the proxy's host
// and certificate. It travels in the node metadata's "nodeInfo" struct,
// a block of its own.
type NodeInfo struct {
	// Node names the host or task the proxy runs on (--node, default the
	// host name); empty from proxies that predate it.
	NodeName string `json:"nodeName"`
	// SVIDExpiresAt is when the proxy's current workload certificate
	// expires; zero before the first one.
	SVIDExpiresAt time.Time `json:"svidExpiresAt"`
}

// maxNodeName bounds a node name: it is shown, never parsed.
const maxNodeName = 253

// Validate checks a registration as the control plane receives it.
func (r *Registration) Validate() error {
	var errs []error
	if err := identity.ValidateServiceName(r.Service); err != nil {
		errs = append(errs, fmt.Errorf("service: %w", err))
	}
	if r.Instance == "" || len(r.Instance) > 128 {
		errs = append(errs, errors.New("instance id must be 1 to 128 characters"))
	}
	for _, c := range r.Instance {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			errs = append(errs, fmt.Errorf("instance id %q: %q is not allowed", r.Instance, c))
			break
		}
	}
	if net.ParseIP(r.Address) == nil {
		errs = append(errs, fmt.Errorf("address %q is not an IP address", r.Address))
	}
	if r.Port <= 0 || r.Port > 65535 {
		errs = append(errs, fmt.Errorf("port %d is not a port number", r.Port))
	}
	if r.Network != "" {
		if err := v1.ValidateNetworkName(r.Network); err != nil {
			errs = append(errs, fmt.Errorf("network: %w", err))
		}
	}
	if r.EdgePort < 0 || r.EdgePort > 65535 {
		errs = append(errs, fmt.Errorf("edge port %d is not a port number", r.EdgePort))
	}
	for _, u := range r.Upstreams {
		if err := identity.ValidateServiceName(u); err != nil {
			errs = append(errs, fmt.Errorf("upstream: %w", err))
		}
	}
	if err := validNodeName(r.NodeName); err != nil {
		errs = append(errs, err)
	}
	if err := validClaim(r.Claim); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Node encodes r as an xDS node.
func (r *Registration) Node() *corev3.Node {
	ups := make([]any, len(r.Upstreams))
	for i, u := range r.Upstreams {
		ups[i] = u
	}
	md, _ := structpb.NewStruct(map[string]any{
		"version":   r.Version,
		"address":   r.Address,
		"port":      strconv.Itoa(r.Port),
		"edgePort":  strconv.Itoa(r.EdgePort),
		"network":   r.Network,
		"upstreams": ups,
		"healthy":   r.Healthy,
		"nodeInfo":  r.NodeInfo.metadata(),
		"claim":     r.Claim,
	})
	return &corev3.Node{Id: r.Instance, Cluster: r.Service, Metadata: md, UserAgentName: "trellis", ClientFeatures: []string{FeaturePatch}}
}

// FromNode decodes a registration from an xDS node.
func FromNode(n *corev3.Node) (Registration, error) {
	if n == nil {
		return Registration{}, errors.New("request has no node")
	}
	r := Registration{Instance: n.GetId(), Service: n.GetCluster()}
	f := n.GetMetadata().GetFields()
	r.Version = f["version"].GetStringValue()
	r.Address = f["address"].GetStringValue()
	r.Network = f["network"].GetStringValue()
	r.Healthy = f["healthy"].GetBoolValue()
	r.Claim = f["claim"].GetStringValue()
	port, err := strconv.Atoi(f["port"].GetStringValue())
	if err != nil {
		return Registration{}, fmt.Errorf("node metadata port: %w", err)
	}
	r.Port = port
	if ep := f["edgePort"].GetStringValue(); ep != "" {
		if r.EdgePort, err = strconv.Atoi(ep); err != nil {
			return Registration{}, fmt.Errorf("node metadata edgePort: %w", err)
		}
	}
	for _, v := range f["upstreams"].GetListValue().GetValues() {
		r.Upstreams = append(r.Upstreams, v.GetStringValue())
	}
	if r.NodeInfo, err = nodeInfoFrom(f["nodeInfo"].GetStructValue()); err != nil {
		return Registration{}, err
	}
	return r, r.Validate()
}

// Response wraps a whole snapshot in a discovery response.
func Response(s *topology.Snapshot, nonce string) (*discoveryv3.DiscoveryResponse, error) {
	r, err := topology.Split(s)
	if err != nil {
		return nil, err
	}
	// The snapshot's own version, whatever made it: tests build some by
	// hand.
	r.Version = s.Version
	return Respond(s.Version, nonce, FullResource(r)), nil
}

// SnapshotFrom decodes and validates the snapshot in a discovery response.
func SnapshotFrom(resp *discoveryv3.DiscoveryResponse) (*topology.Snapshot, error) {
	if resp.GetTypeUrl() != SnapshotType || len(resp.GetResources()) != 1 {
		return nil, fmt.Errorf("response of type %q with %d resources, want one %s", resp.GetTypeUrl(), len(resp.GetResources()), SnapshotType)
	}
	var s topology.Snapshot
	if err := json.Unmarshal(resp.Resources[0].GetValue(), &s); err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	if s.Version != resp.GetVersionInfo() {
		return nil, fmt.Errorf("snapshot version %q differs from response version %q", s.Version, resp.GetVersionInfo())
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("invalid snapshot: %w", err)
	}
	return &s, nil
}

// validClaim checks a registration's claim: empty, or 32 to 128 lowercase
// hex digits (the claim is compared by hash, never shown).
func validClaim(c string) error {
	if c == "" {
		return nil
	}
	if len(c) < 32 || len(c) > 128 {
		return fmt.Errorf("claim: %d characters, want 32 to 128 hex digits", len(c))
	}
	for _, ch := range c {
		if !(ch >= '0' && ch <= '9' || ch >= 'a' && ch <= 'f') {
			return errors.New("claim: not lowercase hex")
		}
	}
	return nil
}

// metadata encodes n for the node metadata.
func (n NodeInfo) metadata() map[string]any {
	m := map[string]any{"node": n.NodeName}
	if !n.SVIDExpiresAt.IsZero() {
		m["svidExpiresAt"] = n.SVIDExpiresAt.UTC().Format(time.RFC3339)
	}
	return m
}

// nodeInfoFrom decodes the node metadata's nodeInfo block; a proxy that
// sends none has an empty NodeInfo.
func nodeInfoFrom(s *structpb.Struct) (NodeInfo, error) {
	f := s.GetFields()
	n := NodeInfo{NodeName: f["node"].GetStringValue()}
	if v := f["svidExpiresAt"].GetStringValue(); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return NodeInfo{}, fmt.Errorf("node metadata nodeInfo.svidExpiresAt: %w", err)
		}
		n.SVIDExpiresAt = t
	}
	return n, nil
}

// validNodeName accepts any printable name of at most maxNodeName bytes:
// host names, task ARNs and pod names all fit.
func validNodeName(s string) error {
	if len(s) > maxNodeName {
		return fmt.Errorf("node name is %d bytes, over the limit of %d", len(s), maxNodeName)
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return fmt.Errorf("node name %q: %q is not printable", s, c)
		}
	}
	return nil
}

// ALPN is the TLS application protocol a proxy offers first for its
// stream: HTTP/2 carrying gRPC, served on gRPC's own transport. A server
// that does not know it picks "h2", the proxy's second choice, and serves
// the stream through its HTTP server as before.
const ALPN = "trellis-xds"

// ClientPingInterval is how often a proxy pings an idle control-plane
// connection. The server accepts pings at half this interval and more
// seldom; pinging more often than a server permits gets a connection
// closed ("too many pings").
const ClientPingInterval = 20 * time.Second
