package v1

import "time"

// Kinds of resource.
const (
	KindMesh      = "Mesh"
	KindService   = "Service"
	KindIntention = "Intention"
	KindRoute     = "Route"
	KindGateway   = "Gateway"
)

// Kinds lists the kinds that can be applied, in the order they are applied.
var Kinds = []string{KindMesh, KindService, KindIntention, KindRoute, KindGateway}

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
	// Route is the spec of a Route resource.
	Route *RouteSpec `json:"-" yaml:"-"`
	// Gateway is the spec of a Gateway resource.
	Gateway *GatewaySpec `json:"-" yaml:"-"`
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
	// DefaultPolicy is "deny" (default) or "allow": what happens to a call no
	// intention matches. A new mesh denies every call until intentions
	// allow it; the proxy's refusal reads "no intention allows A -> B".
	DefaultPolicy string `json:"defaultPolicy,omitempty" yaml:"defaultPolicy,omitempty"`

	// DNS, when set, names every Service in DNS under the mesh's domains:
	// the sidecars answer their apps, `trellis server --dns-listen`
	// answers callers outside the mesh.
	DNS *MeshDNS `json:"dns,omitempty" yaml:"dns,omitempty"`
}

// MeshDNS is the mesh's DNS: every Service answers as <service>.<domain>
// for each of Domains, and at its own spec.hostnames.
type MeshDNS struct {
	// Domains are the DNS domains of the mesh, such as demo.local or
	// appmeshworkshop.hosted.local (lowercase, no trailing dot, at most
	// 16). Names under them that are no service's answer NXDOMAIN.
	Domains []string `json:"domains,omitempty" yaml:"domains,omitempty"`
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
	// Limits are circuit breakers: each caller's sidecar refuses what
	// would go over them, so that an overloaded service sheds load at its
	// callers instead of queueing it.
	Limits *ServiceLimits `json:"limits,omitempty" yaml:"limits,omitempty"`
	// DNSNames are the names the mesh CA may put in edge certificates of
	// this service (its sidecars' TLS listeners for clients outside the
	// mesh); "*.example.com" allows any one label under example.com. No
	// name is allowed unless listed: a token for a service cannot get a
	// certificate for someone else's domain.
	DNSNames []string `json:"dnsNames,omitempty" yaml:"dnsNames,omitempty"`

	// Hostnames are extra full DNS names of the service, answered like
	// <service>.<domain> (such as crystal.appmeshworkshop.hosted.local,
	// so that the names apps already use keep working). A name belongs
	// to one service only: apply refuses a second claim.
	Hostnames []string `json:"hostnames,omitempty" yaml:"hostnames,omitempty"`
	// Locality is where callers' sidecars send calls when the service has
	// instances in several networks: "prefer-local" (default) uses the
	// caller's own network while any instance there is healthy, and the
	// others only when none is; "any" balances over every network alike.
	Locality string `json:"locality,omitempty" yaml:"locality,omitempty"`
}

// Localities of a service.
const (
	LocalityPreferLocal = "prefer-local"
	LocalityAny         = "any"
)

// EffectiveLocality returns Locality with its default applied; a nil
// spec (a service with no resource) prefers local.
func (s *ServiceSpec) EffectiveLocality() string {
	if s == nil || s.Locality == "" {
		return LocalityPreferLocal
	}
	return s.Locality
}

// DefaultNetwork is the network of an instance that names none.
const DefaultNetwork = "default"

// EffectiveNetwork returns network, or DefaultNetwork when it is empty
// (records written before networks were read have none).
func EffectiveNetwork(network string) string {
	if network == "" {
		return DefaultNetwork
	}
	return network
}

// ServiceLimits bound what one caller's sidecar sends to a service. Zero
// means no limit.
type ServiceLimits struct {
	// MaxConnections bounds concurrent connections (tcp services).
	MaxConnections int `json:"maxConnections,omitempty" yaml:"maxConnections,omitempty"`
	// MaxRequests bounds concurrent requests (HTTP protocols).
	MaxRequests int `json:"maxRequests,omitempty" yaml:"maxRequests,omitempty"`
	// MaxPendingRequests bounds requests waiting for one of MaxRequests;
	// beyond it, and for a request that waited a route timeout, the caller
	// gets 503 at once.
	MaxPendingRequests int `json:"maxPendingRequests,omitempty" yaml:"maxPendingRequests,omitempty"`
}

// IntentionSpec authorizes (or forbids) calls from one service to another.
type IntentionSpec struct {
	// Source is the calling service, or "*" for any service.
	Source string `json:"source" yaml:"source"`
	// Destination is the called service.
	Destination string `json:"destination" yaml:"destination"`
	// Action is "allow" or "deny". An intention has an Action or
	// Permissions, not both.
	Action string `json:"action,omitempty" yaml:"action,omitempty"`
	// Permissions authorize HTTP requests one by one (the destination's
	// protocol must be http, http2 or grpc): the first permission whose
	// match fits decides; a request none fits gets the mesh's default
	// policy. Connections that are not HTTP are refused.
	Permissions []IntentionPermission `json:"permissions,omitempty" yaml:"permissions,omitempty"`
	// Description is free text for people.
	Description string `json:"description,omitempty" yaml:"description,omitempty"`
}

// IntentionPermission allows or denies the HTTP requests its match fits.
// Requests are checked and normalized before any permission sees them
// (see the L7 proxy): methods other than Methods are refused, paths are
// matched decoded and normalized, the host canonical, so encodings cannot
// slip past a rule. A header is matched as the list it is (every field of
// its name, each split at commas): a deny fits when any element fits,
// ignoring case (and so does its path), and also fits what an app may
// read as the same request (a trailing slash, segment parameters, HEAD
// for GET, method-override fields, X-Forwarded-Host); an allow fits only
// when every element fits, as written. See package httpmatch.
type IntentionPermission struct {
	// Action is "allow" or "deny": what happens to a request HTTP fits.
	Action string `json:"action" yaml:"action"`
	// HTTP is what the request must have: path, methods, headers.
	HTTP RouteMatch `json:"http" yaml:"http"`
}

// RouteSpec is a virtual router: how calls to one HTTP service (the
// Route's name) are routed to its versions. The first rule whose match fits
// a request decides; a request no rule matches goes to every healthy
// instance alike, as with no Route at all.
type RouteSpec struct {
	// Rules are tried in order (at least 1, at most 100); at most one
	// has a Canary.
	Rules []RouteRule `json:"rules" yaml:"rules"`
}

// RouteRule matches requests and sends them to weighted targets.
type RouteRule struct {
	// Name labels the rule in metrics and logs (default "rule-N", from 1).
	Name string `json:"name,omitempty" yaml:"name,omitempty"`
	// Match selects requests; empty matches all.
	Match RouteMatch `json:"match,omitempty" yaml:"match,omitempty"`
	// Targets are versions of the service with weights; empty sends to
	// every version alike. Weights are relative (90 and 10 send 90 %).
	Targets []RouteTarget `json:"targets,omitempty" yaml:"targets,omitempty"`
	// Timeout bounds the wait for the response headers, retries included
	// (a Go duration, default 15s); the caller then gets 504.
	Timeout string `json:"timeout,omitempty" yaml:"timeout,omitempty"`
	// Retries, when set, retries failed attempts.
	Retries *RetryPolicy `json:"retries,omitempty" yaml:"retries,omitempty"`
	// PrefixRewrite replaces Match.PathPrefix in the path before the
	// request is sent on.
	PrefixRewrite string `json:"prefixRewrite,omitempty" yaml:"prefixRewrite,omitempty"`

	// Canary, when set, makes the control plane move this rule's
	// weights to Canary.Version step by step while its figures hold,
	// and back to the other target when they do not.
	Canary *CanaryPolicy `json:"canary,omitempty" yaml:"canary,omitempty"`
}

// RouteMatch is what a request must have for a rule to apply: all of the
// set fields, and at most one of the path fields. A PathPrefix ending in
// "/" also matches the path without that slash ("/admin/" matches
// "/admin"). Apply refuses a match that could never fit a request as the
// proxies pass it on.
type RouteMatch struct {
	// PathPrefix matches paths that start with it (starting with /).
	PathPrefix string `json:"pathPrefix,omitempty" yaml:"pathPrefix,omitempty"`
	// PathExact matches this path only (starting with /).
	PathExact string `json:"pathExact,omitempty" yaml:"pathExact,omitempty"`
	// PathRegex is a regular expression (Go's RE2 syntax) that must
	// match the whole path.
	PathRegex string `json:"pathRegex,omitempty" yaml:"pathRegex,omitempty"`
	// Methods the request may have, in capitals (any of them); empty
	// matches every method.
	Methods []string `json:"methods,omitempty" yaml:"methods,omitempty"`
	// Headers the request must all have.
	Headers []HeaderMatch `json:"headers,omitempty" yaml:"headers,omitempty"`
}

// HeaderMatch matches one request header: by exact value, prefix or
// regular expression, or (none set) by being present. Values are matched
// against the header's elements (split at commas, at semicolons for
// Cookie), so a value cannot hold the separator. Name "host" matches the
// request's authority (Host, or HTTP/2 :authority) in lowercase, without
// port or trailing dot; pseudo-header names are refused.
type HeaderMatch struct {
	// Name of the header, any case; "host" for the authority.
	Name string `json:"name" yaml:"name"`
	// Exact is the value an element must equal.
	Exact string `json:"exact,omitempty" yaml:"exact,omitempty"`
	// Prefix is what an element must start with.
	Prefix string `json:"prefix,omitempty" yaml:"prefix,omitempty"`
	// Regex is a regular expression (Go's RE2 syntax) that must match
	// the whole element. Set at most one of Exact, Prefix and Regex.
	Regex string `json:"regex,omitempty" yaml:"regex,omitempty"`
}

// RouteTarget is one version of the service and its share of the traffic.
type RouteTarget struct {
	// Version is the instances' version label (trellis proxy --version),
	// listed once per rule.
	Version string `json:"version" yaml:"version"`
	// Weight is the version's share, relative to the rule's other
	// targets (0 to 10000; not all 0).
	Weight int `json:"weight" yaml:"weight"`
}

// RetryPolicy says when and how often a failed attempt is retried.
type RetryPolicy struct {
	// Attempts is the number of tries in all, the first included (2-10).
	Attempts int `json:"attempts" yaml:"attempts"`
	// PerTryTimeout bounds one attempt (a Go duration; default: the
	// rule's timeout).
	PerTryTimeout string `json:"perTryTimeout,omitempty" yaml:"perTryTimeout,omitempty"`
	// On lists the failures that are retried: connect-failure, reset,
	// 5xx, gateway-error (502, 503, 504), retriable-grpc (the gRPC
	// statuses UNAVAILABLE, RESOURCE_EXHAUSTED and, for idempotent
	// methods, DEADLINE_EXCEEDED). Default: connect-failure, reset,
	// gateway-error.
	On []string `json:"on,omitempty" yaml:"on,omitempty"`
	// NonIdempotent allows retrying POST, PATCH and other methods that
	// are not idempotent; they are never retried otherwise.
	NonIdempotent bool `json:"nonIdempotent,omitempty" yaml:"nonIdempotent,omitempty"`
}

// Retry conditions.
const (
	RetryConnectFailure = "connect-failure"
	RetryReset          = "reset"
	Retry5xx            = "5xx"
	RetryGatewayError   = "gateway-error"
	RetryGRPC           = "retriable-grpc"
)

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
	// EdgePort is the proxy's edge listener (for clients outside the
	// mesh, and tls-passthrough gateways), or 0.
	EdgePort int `json:"edgePort,omitempty"`
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
	// ExpiresAt, when set, is when the token stops working; its open
	// proxy streams end then.
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
	// LastUsedAt is when the token last authenticated a request or a
	// stream, to the minute (it is written at most once a minute).
	LastUsedAt *time.Time `json:"lastUsedAt,omitempty"`

	// Viewer tokens read what admin tokens read (not tokens) and change
	// nothing: the API refuses every write with 403, and a dashboard
	// session made with one is read-only too. Neither Admin nor Services
	// are set on a viewer token.
	Viewer bool `json:"viewer,omitempty"`
}

// Expired reports whether the token's expiry has passed at now.
func (t *Token) Expired(now time.Time) bool {
	return t.ExpiresAt != nil && !now.Before(*t.ExpiresAt)
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
	// AckedRoots are the fingerprints of the trust bundle's roots in the
	// last snapshot the proxy applied: a root rotation waits until every
	// proxy trusts the new root.
	AckedRoots []string `json:"ackedRoots,omitempty"`
	// ConnectedAt is when the proxy's stream opened.
	ConnectedAt time.Time `json:"connectedAt"`

	// Network is the proxy's network.
	Network string `json:"network,omitempty"`
	// Paths say how the proxy reaches each upstream in the last snapshot
	// sent to it, by service name.
	Paths []UpstreamPath `json:"paths,omitempty"`
	// Node names the host or task the proxy runs on, as the proxy
	// reports it (--node, default its host name); empty from proxies
	// that predate it.
	Node string `json:"node,omitempty"`
	// SVIDExpiresAt is when the proxy's current workload certificate
	// expires, as it last reported; nil before it reported one.
	SVIDExpiresAt *time.Time `json:"svidExpiresAt,omitempty"`
}

// UpstreamPath is how a proxy reaches one upstream: directly, through the
// network gateways of other networks, or not at all.
type UpstreamPath struct {
	// Service is the upstream service.
	Service string `json:"service"`
	// Path is "direct", "via gateway network NAME", several of these
	// joined by ", " when endpoints differ, or "none" when the upstream
	// has no endpoint.
	Path string `json:"path"`
	// Unreachable says why endpoints are missing (a network whose
	// gateways are all down), if any are.
	Unreachable string `json:"unreachable,omitempty"`
}

// Gateway listener protocols.
const (
	GatewayHTTP           = "http"            // ingress, plain HTTP
	GatewayHTTPS          = "https"           // ingress, TLS ended at the gateway
	GatewayTLSPassthrough = "tls-passthrough" // routed by SNI, never decrypted
	GatewayNetwork        = "network"         // east-west: mTLS from other networks to local instances, by SNI, never decrypted
)

// GatewaySpec is a gateway: what `trellis gateway --name NAME` serves. The
// gateway's identity is the service named like the resource: its token is
// a service token for that name, and intentions name it as the source.
type GatewaySpec struct {
	// Listeners are the gateway's ports, at least one, each port once.
	Listeners []GatewayListener `json:"listeners" yaml:"listeners"`
}

// GatewayListener is one port of a gateway.
type GatewayListener struct {
	// Port the gateway listens on.
	Port int `json:"port" yaml:"port"`
	// Protocol is http, https, tls-passthrough or network.
	Protocol string `json:"protocol" yaml:"protocol"`
	// TLS is the certificate of an https listener.
	TLS *GatewayTLS `json:"tls,omitempty" yaml:"tls,omitempty"`
	// Routes of an http or https listener, tried in order: the first whose
	// host and path prefix match wins; a request no route matches gets 404.
	Routes []GatewayRoute `json:"routes,omitempty" yaml:"routes,omitempty"`
	// Targets of a tls-passthrough listener: which service's instances
	// (their edge listeners) serve which SNI name.
	Targets []PassthroughTarget `json:"targets,omitempty" yaml:"targets,omitempty"`
	// DefaultService of a tls-passthrough listener serves ClientHellos
	// without SNI, or with a name no target has; empty refuses them.
	DefaultService string `json:"defaultService,omitempty" yaml:"defaultService,omitempty"`
	// ProxyProtocol sends a PROXY protocol v2 header with the client's
	// address to pass-through targets.
	ProxyProtocol bool `json:"proxyProtocol,omitempty" yaml:"proxyProtocol,omitempty"`
	// HealthCheck of pass-through targets: tcp (default: a connect) or tls
	// (a full handshake, certificate unchecked).
	HealthCheck string `json:"healthCheck,omitempty" yaml:"healthCheck,omitempty"`
	// DrainTimeout is how long connections to a target that left stay open
	// (a Go duration; default 30s).
	DrainTimeout string `json:"drainTimeout,omitempty" yaml:"drainTimeout,omitempty"`
	// TrustedProxies of an http or https listener are the hops in front
	// of it (load balancers), as CIDRs or single addresses, whose
	// forwarding fields (X-Forwarded-For, -Proto, -Host, Forwarded, ...)
	// and X-Request-Id the gateway keeps and appends to. Default none:
	// every client's are replaced by what the gateway saw.
	TrustedProxies []string `json:"trustedProxies,omitempty" yaml:"trustedProxies,omitempty"`

	// Network of a network listener (required there, refused elsewhere):
	// the network whose instances the listener exposes to the other
	// networks. A gateway process whose --network differs refuses to
	// serve the listener, and callers do not count it.
	Network string `json:"network,omitempty" yaml:"network,omitempty"`
}

// Certificate sources of GatewayTLS.
const (
	CertFiles      = "files"       // CertFile and KeyFile, reloaded when they change
	CertMesh       = "mesh"        // issued and renewed by the mesh CA for DNSNames
	CertSelfSigned = "self-signed" // made at start for DNSNames
)

// GatewayTLS says where an https listener's certificate comes from: files
// on the gateway's host (reloaded when they change), the mesh CA (for
// DNSNames, which this listing allows), or self-signed at start for
// DNSNames.
type GatewayTLS struct {
	// Source is files, mesh or self-signed; default files when CertFile
	// is set, else self-signed.
	Source string `json:"source,omitempty" yaml:"source,omitempty"`
	// CertFile is the certificate chain (PEM) on the gateway's host, for
	// source files, with KeyFile.
	CertFile string `json:"certFile,omitempty" yaml:"certFile,omitempty"`
	// KeyFile is CertFile's private key (PEM).
	KeyFile string `json:"keyFile,omitempty" yaml:"keyFile,omitempty"`
	// DNSNames are the names in the certificate of source mesh or
	// self-signed (required there, refused with files).
	DNSNames []string `json:"dnsNames,omitempty" yaml:"dnsNames,omitempty"`
}

// EffectiveSource returns Source with its default applied.
func (t *GatewayTLS) EffectiveSource() string {
	switch {
	case t.Source != "":
		return t.Source
	case t.CertFile != "":
		return CertFiles
	}
	return CertSelfSigned
}

// GatewayRoute sends matching requests to a mesh service.
type GatewayRoute struct {
	// Host matches the request's host (port ignored, case-insensitive);
	// "*.example.com" matches one label; empty matches any.
	Host string `json:"host,omitempty" yaml:"host,omitempty"`
	// PathPrefix matches whole path segments of the normalized path:
	// "/api" matches /api and /api/x, not /apix. Default "/".
	PathPrefix string `json:"pathPrefix,omitempty" yaml:"pathPrefix,omitempty"`
	// Service is the mesh service that serves the request.
	Service string `json:"service" yaml:"service"`
	// RewritePrefix replaces the matched PathPrefix; empty keeps the path.
	RewritePrefix string `json:"rewritePrefix,omitempty" yaml:"rewritePrefix,omitempty"`
}

// PassthroughTarget routes one SNI name to a service.
type PassthroughTarget struct {
	// SNI is the server name; "*.example.com" matches one label.
	SNI string `json:"sni" yaml:"sni"`
	// Service is the mesh service whose instances' edge listeners get
	// the connection.
	Service string `json:"service" yaml:"service"`
}

// Services lists the services a gateway sends traffic to, each once.
func (g *GatewaySpec) Services() []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, l := range g.Listeners {
		for _, r := range l.Routes {
			add(r.Service)
		}
		for _, t := range l.Targets {
			add(t.Service)
		}
		add(l.DefaultService)
	}
	return out
}
