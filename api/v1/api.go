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

	// Certs describe the roots in RootsPEM, for people (the dashboard's
	// Overview): filled in by the server's answers, ignored in requests.
	Certs []RootCert `json:"certs,omitempty"`
}

// RootCert describes one root of the trust bundle.
type RootCert struct {
	// Fingerprint is the hex SHA-256 of the certificate's DER.
	Fingerprint string `json:"fingerprint"`
	// Subject is the certificate's subject, as text.
	Subject string `json:"subject"`
	// NotAfter is when the root expires.
	NotAfter time.Time `json:"notAfter"`
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

	// Viewer makes a read-only token, for the dashboard and scripts that
	// only look: with no Services, and not with Admin.
	Viewer bool `json:"viewer,omitempty"`
}

// NewToken is the answer of POST /v1/tokens: the record and the secret,
// shown this once.
type NewToken struct {
	Token
	// Secret is the bearer token.
	Secret string `json:"secret"`
}

// Rotation phases.
const (
	RotationPrepared = "prepared" // the new root is in the bundle; the old key still signs
	RotationActive   = "active"   // the new key signs; the old root is still trusted
	RotationRetired  = "retired"  // the old root has left the bundle
)

// Rotation is the answer of GET and POST /v1/ca/rotation: where a root
// rotation stands.
type Rotation struct {
	// Phase is "" (none yet), prepared, active or retired.
	Phase string `json:"phase"`
	// NewRoot and OldRoot are fingerprints (hex SHA-256 of the DER).
	NewRoot string `json:"newRoot,omitempty"`
	OldRoot string `json:"oldRoot,omitempty"`
	// StartedAt and SwitchedAt are when the new root was added and when
	// the servers began signing with its key.
	StartedAt  *time.Time `json:"startedAt,omitempty"`
	SwitchedAt *time.Time `json:"switchedAt,omitempty"`
	// OldSVIDsUntil is when the last certificate the old key may have
	// signed expires: the old root may be removed after it.
	OldSVIDsUntil *time.Time `json:"oldSVIDsUntil,omitempty"`
	// Proxies connected, Trusting of them the new root in the snapshot
	// they applied, and the instances still Waiting.
	Proxies  int      `json:"proxies"`
	Trusting int      `json:"trusting"`
	Waiting  []string `json:"waiting,omitempty"`
}

// RotationRequest is the body of POST /v1/ca/rotation.
type RotationRequest struct {
	// Action is prepare (make the new root and add it to the bundle) or
	// switch (sign with the new key, once every proxy trusts it).
	Action string `json:"action"`
	// Force switches even if some proxies have not acknowledged the new
	// root.
	Force bool `json:"force,omitempty"`
}

// RemoveRootRequest is the body of POST /v1/ca/roots/remove.
type RemoveRootRequest struct {
	// Fingerprint of the root, or a unique prefix of at least 8 characters.
	Fingerprint string `json:"fingerprint"`
	// Force removes a rotation's old root before its certificates have
	// expired.
	Force bool `json:"force,omitempty"`
}
