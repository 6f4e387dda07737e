package v1

import "time"

// Kinds of resource.
const (
	KindMesh      = "Mesh"
	KindService   = "Service"
	KindIntention = "Intention"
)

// Kinds lists the kinds that can be applied, in the order they are applied.
var Kinds = []string{KindMesh, KindService, KindIntention}

// Resource is one declarative document: a kind, a name and the kind's spec.
// Exactly one of the spec fields is set, the one matching Kind.
type Resource struct {
	// Kind is the resource kind, one of Kinds.
	Kind string `json:"kind" yaml:"kind"`
	// Name identifies the resource within its kind.
	Name string `json:"name" yaml:"name"`
	// Mesh is the spec of a Mesh resource.
	Mesh *MeshSpec `json:"-" yaml:"-"`
	// Service is the spec of a Service resource.
	Service *ServiceSpec `json:"-" yaml:"-"`
	// Intention is the spec of an Intention resource.
	Intention *IntentionSpec `json:"-" yaml:"-"`
}

// MeshName is the name of the one Mesh resource.
const MeshName = "default"

// MTLS modes.
const (
	MTLSStrict     = "strict"
	MTLSPermissive = "permissive"
)

// Actions of an intention, and default policies of a mesh.
const (
	Allow = "allow"
	Deny  = "deny"
)

// MeshSpec is the mesh-wide configuration. There is one Mesh, named "default";
// when none is applied, the defaults below hold.
type MeshSpec struct {
	// TrustDomain is read-only: it is fixed when the CA is created. When set
	// it must equal the CA's trust domain.
	TrustDomain string `json:"trustDomain,omitempty" yaml:"trustDomain,omitempty"`
	// MTLS is "strict" (default: inbound accepts mTLS only) or "permissive"
	// (inbound also accepts plain TCP, with no identity).
	MTLS string `json:"mtls,omitempty" yaml:"mtls,omitempty"`
	// DefaultPolicy is "allow" (default) or "deny": what happens to a call no
	// intention matches.
	DefaultPolicy string `json:"defaultPolicy,omitempty" yaml:"defaultPolicy,omitempty"`
}

// Protocols of a service.
const (
	ProtocolTCP   = "tcp"
	ProtocolHTTP  = "http"
	ProtocolHTTP2 = "http2"
	ProtocolGRPC  = "grpc"
)

// ServiceSpec describes a virtual service. Services that instances register
// without a Service resource behave as protocol tcp.
type ServiceSpec struct {
	// Protocol is tcp (default), http, http2 or grpc.
	Protocol string `json:"protocol,omitempty" yaml:"protocol,omitempty"`
	// Port is the port clients conventionally use for the service; it is
	// informational for tcp services.
	Port int `json:"port,omitempty" yaml:"port,omitempty"`
	// Description is free text for people.
	Description string `json:"description,omitempty" yaml:"description,omitempty"`
}

// IntentionSpec authorizes (or forbids) calls from one service to another.
type IntentionSpec struct {
	// Source is the calling service, or "*" for any service.
	Source string `json:"source" yaml:"source"`
	// Destination is the called service.
	Destination string `json:"destination" yaml:"destination"`
	// Action is "allow" or "deny".
	Action string `json:"action" yaml:"action"`
	// Description is free text for people.
	Description string `json:"description,omitempty" yaml:"description,omitempty"`
}

// Instance is one registered instance of a service, kept alive by its proxy.
// Instances are not applied by hand; the proxy registers them.
type Instance struct {
	// ID is unique in the mesh, chosen by the proxy.
	ID string `json:"id"`
	// Service is the service name.
	Service string `json:"service"`
	// Version is the version label, used by routes; may be empty.
	Version string `json:"version,omitempty"`
	// Address is where the instance's proxy accepts mTLS connections.
	Address string `json:"address"`
	// Port is the proxy's public mTLS port.
	Port int `json:"port"`
	// Network names the network the instance is in; empty is the default one.
	Network string `json:"network,omitempty"`
	// Healthy is the last result of the proxy's health check of its app.
	Healthy bool `json:"healthy"`
	// RegisteredAt is when the proxy registered the instance.
	RegisteredAt time.Time `json:"registeredAt"`
}

// Token is a token's record as the API shows it: never the secret.
type Token struct {
	// ID is a short public identifier of the token (a prefix of its hash).
	ID string `json:"id"`
	// Admin tokens may do everything.
	Admin bool `json:"admin,omitempty"`
	// Services are the identities a service token may obtain and register.
	Services []string `json:"services,omitempty"`
	// Description is free text for people.
	Description string `json:"description,omitempty"`
	// CreatedAt is when the token was made.
	CreatedAt time.Time `json:"createdAt"`
}

// ProxyStatus describes a proxy connected to a control plane server.
type ProxyStatus struct {
	// Instance is the instance ID the proxy registered.
	Instance string `json:"instance"`
	// Service is the proxy's service.
	Service string `json:"service"`
	// Server is the control plane server the proxy is connected to.
	Server string `json:"server"`
	// SentVersion is the last snapshot version sent to the proxy.
	SentVersion string `json:"sentVersion"`
	// AckedVersion is the last snapshot version the proxy applied.
	AckedVersion string `json:"ackedVersion"`
	// Error is the proxy's reason for rejecting the last snapshot, if it did.
	Error string `json:"error,omitempty"`
	// ConnectedAt is when the proxy's stream opened.
	ConnectedAt time.Time `json:"connectedAt"`
}
