package v1

import "time"

// ServerIDPath is the path of the SPIFFE ID in the control plane's serving
// certificate: spiffe://<trust-domain>/trellis/server. Workload SVIDs are
// always /svc/<service> and edge certificates carry no URI at all, so no
// certificate the CA signs for a service can pass for the API; clients
// (the CLI, proxies) require this ID, not only a DNS name.
const ServerIDPath = "/trellis/server"

// The request and answer bodies of the HTTP API (/v1/...), shared by the
// server and the Go client.

// ServiceSummary is one entry of GET /v1/services: a declared or registered
// service with its instance counts.
type ServiceSummary struct {
	// Name of the service.
	Name string `json:"name"`
	// Protocol, from its Service resource (tcp when undeclared).
	Protocol string `json:"protocol"`
	// Instances registered, and how many of them are Healthy.
	Instances int `json:"instances"`
	Healthy   int `json:"healthy"`
	// Declared is true when a Service resource exists.
	Declared bool `json:"declared"`
}

// ApplyResult is the answer of POST /v1/resources.
type ApplyResult struct {
	// Applied lists "Kind/name" of every resource written.
	Applied []string `json:"applied"`
}

// Roots is the answer of GET /v1/ca/roots: the mesh's trust bundle.
type Roots struct {
	// TrustDomain of the mesh.
	TrustDomain string `json:"trustDomain"`
	// RootsPEM are the trust anchors, PEM.
	RootsPEM string `json:"roots"`
}

// SignRequest is the body of POST /v1/ca/sign.
type SignRequest struct {
	// Service whose identity to sign; the token must allow it.
	Service string `json:"service"`
	// CSR is a PEM PKCS#10 request; only its public key is used.
	CSR string `json:"csr"`
	// DNSNames, when set, ask for an edge certificate instead of an SVID:
	// a server certificate for these names, with no SPIFFE ID, for clients
	// outside the mesh. The Service resource's spec.dnsNames, or the https
	// listeners of the service's Gateway, must allow each name.
	DNSNames []string `json:"dnsNames,omitempty"`
}

// Signed is the answer of POST /v1/ca/sign.
type Signed struct {
	// ChainPEM is the SVID, leaf first, with any intermediates.
	ChainPEM string `json:"chain"`
	// ExpiresAt is the leaf's NotAfter.
	ExpiresAt time.Time `json:"expiresAt"`
}

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	// Services the token may act as.
	Services []string `json:"services"`
	// Admin makes an admin token.
	Admin bool `json:"admin,omitempty"`
	// Description is free text.
	Description string `json:"description,omitempty"`
	// TTL, when set, is how long the token works (a Go duration, at
	// least 10s).
	TTL string `json:"ttl,omitempty"`
}

// NewToken is the answer of POST /v1/tokens: the record and the secret,
// shown this once.
type NewToken struct {
	Token
	// Secret is the bearer token.
	Secret string `json:"secret"`
}
