package certs

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// Errors returned by VerifySVID.
var (
	ErrNoCertificate = errors.New("peer presented no certificate")
	ErrNotSVID       = errors.New("peer certificate is not an X509-SVID")
)

// Bundle is a trust domain's set of trust anchors.
type Bundle struct {
	TrustDomain string
	Pool        *x509.CertPool
	PEM         []byte
}

// NewBundle parses PEM roots for trustDomain.
func NewBundle(trustDomain string, rootsPEM []byte) (*Bundle, error) {
	if err := identity.ValidateTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootsPEM) {
		return nil, errors.New("trust bundle holds no PEM certificate")
	}
	return &Bundle{TrustDomain: trustDomain, Pool: pool, PEM: rootsPEM}, nil
}

// VerifySVID checks a peer's certificate chain (leaf first, as crypto/tls
// parsed it) against the bundle at time now and returns the leaf's
// identity. It rejects a leaf that is a CA, may sign certificates or CRLs,
// lacks the digitalSignature key usage, has other than one URI SAN, or
// names another trust domain.
func VerifySVID(chain []*x509.Certificate, b *Bundle, now time.Time) (identity.ID, error) {
	if len(chain) == 0 {
		return identity.ID{}, ErrNoCertificate
	}
	leaf := chain[0]
	switch {
	case leaf.IsCA:
		return identity.ID{}, fmt.Errorf("%w: leaf is a CA", ErrNotSVID)
	case leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return identity.ID{}, fmt.Errorf("%w: leaf may sign certificates or CRLs", ErrNotSVID)
	case leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return identity.ID{}, fmt.Errorf("%w: leaf lacks digitalSignature key usage", ErrNotSVID)
	}
	id, err := identity.FromCertificate(leaf)
	if err != nil {
		return identity.ID{}, fmt.Errorf("%w: %v", ErrNotSVID, err)
	}
	if id.TrustDomain() != b.TrustDomain {
		return identity.ID{}, fmt.Errorf("peer %s is not in trust domain %q", id, b.TrustDomain)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:         b.Pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return identity.ID{}, fmt.Errorf("verify %s: %w", id, err)
	}
	return id, nil
}
