package certs

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// Errors returned by VerifySVID and VerifySPIFFE, one per class of
// refusal; RejectReason names them for metrics.
var (
	ErrNoCertificate = errors.New("peer presented no certificate")
	ErrNotSVID       = errors.New("peer certificate is not an X509-SVID")
	ErrTrustDomain   = errors.New("peer is not in the bundle's trust domain")
	ErrSigningCert   = errors.New("peer chain has a signing certificate the X509-SVID standard forbids")
	ErrUntrusted     = errors.New("peer chain does not verify against the trust bundle")
	ErrUnauthorized  = errors.New("peer identity is not the one expected")
)

// RejectReason returns a short label for why a peer was refused, one of a
// fixed set (no_certificate, not_svid, trust_domain, signing_certificate,
// untrusted, unauthorized, other), so that it can label a metric.
func RejectReason(err error) string {
	switch {
	case errors.Is(err, ErrNoCertificate):
		return "no_certificate"
	case errors.Is(err, ErrNotSVID):
		return "not_svid"
	case errors.Is(err, ErrTrustDomain):
		return "trust_domain"
	case errors.Is(err, ErrSigningCert):
		return "signing_certificate"
	case errors.Is(err, ErrUntrusted):
		return "untrusted"
	case errors.Is(err, ErrUnauthorized):
		return "unauthorized"
	}
	return "other"
}

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
// parsed it) against the bundle at time now, as VerifySPIFFE does, and
// returns the leaf's workload identity (spiffe://<td>/svc/<service>).
func VerifySVID(chain []*x509.Certificate, b *Bundle, now time.Time) (identity.ID, error) {
	sid, err := VerifySPIFFE(chain, b, now)
	if err != nil {
		return identity.ID{}, err
	}
	id, err := sid.Workload()
	if err != nil {
		return identity.ID{}, fmt.Errorf("%w: %w", ErrNotSVID, err)
	}
	return id, nil
}

var oidExtKeyUsage = asn1.ObjectIdentifier{2, 5, 29, 37}

// VerifySPIFFE checks a peer's certificate chain (leaf first) against the
// bundle at time now by the SPIFFE X509-SVID standard, and returns the
// leaf's SPIFFE ID, whatever its path. The leaf must have exactly one URI
// SAN, read from its signed bytes and valid by identity.ParseSPIFFE, in
// the bundle's trust domain; must not be a CA; must have the
// digitalSignature key usage and neither keyCertSign nor cRLSign; and, if
// it has an extended key usage extension, must list both serverAuth and
// clientAuth in it, whichever side of the handshake it is on. The chain
// must verify to a root of the bundle, and in it each intermediate must
// have keyCertSign and every signing certificate (root included) may
// carry no SPIFFE ID but that of the trust domain itself, without a path.
func VerifySPIFFE(chain []*x509.Certificate, b *Bundle, now time.Time) (identity.SPIFFEID, error) {
	if len(chain) == 0 {
		return identity.SPIFFEID{}, ErrNoCertificate
	}
	leaf := chain[0]
	if err := checkLeaf(leaf); err != nil {
		return identity.SPIFFEID{}, err
	}
	id, err := identity.SPIFFEIDFromCertificate(leaf)
	if err != nil {
		return identity.SPIFFEID{}, fmt.Errorf("%w: %w", ErrNotSVID, err)
	}
	if id.Path() == "" {
		return identity.SPIFFEID{}, fmt.Errorf("%w: leaf carries %s, a trust domain's ID with no path", ErrNotSVID, id)
	}
	if id.TrustDomain() != b.TrustDomain {
		return identity.SPIFFEID{}, fmt.Errorf("%w: peer %s, bundle %q", ErrTrustDomain, id, b.TrustDomain)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	verified, err := leaf.Verify(x509.VerifyOptions{
		Roots:         b.Pool,
		Intermediates: inter,
		CurrentTime:   now,
		// Extended key usage is checked on the leaf above, by the SPIFFE
		// rule, not by Go's nesting rule on the chain.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return identity.SPIFFEID{}, fmt.Errorf("%w: verify %s: %w", ErrUntrusted, id, err)
	}
	// The leaf is admitted by a chain whose signing certificates all
	// follow the standard; chains through any other are not counted.
	var firstErr error
	for _, vc := range verified {
		err := checkSigners(vc, b.TrustDomain)
		if err == nil {
			return id, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return identity.SPIFFEID{}, fmt.Errorf("%w: %s: %w", ErrSigningCert, id, firstErr)
}

func checkLeaf(leaf *x509.Certificate) error {
	switch {
	case leaf.IsCA:
		return fmt.Errorf("%w: leaf is a CA", ErrNotSVID)
	case leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return fmt.Errorf("%w: leaf may sign certificates or CRLs", ErrNotSVID)
	case leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return fmt.Errorf("%w: leaf lacks the digitalSignature key usage", ErrNotSVID)
	}
	if !hasExtension(leaf, oidExtKeyUsage) {
		return nil // the standard recommends the extension but allows none
	}
	var server, client bool
	for _, u := range leaf.ExtKeyUsage {
		server = server || u == x509.ExtKeyUsageServerAuth
		client = client || u == x509.ExtKeyUsageClientAuth
	}
	if !server || !client {
		return fmt.Errorf("%w: leaf's extended key usage %s lacks serverAuth or clientAuth", ErrNotSVID, ekuNames(leaf))
	}
	return nil
}

// checkSigners checks the signing certificates of a verified chain (leaf
// first, root last).
func checkSigners(chain []*x509.Certificate, td string) error {
	for i, c := range chain[1:] {
		root := i == len(chain)-2
		what := fmt.Sprintf("intermediate %q", c.Subject.CommonName)
		if root {
			what = fmt.Sprintf("root %q", c.Subject.CommonName)
		}
		// The root is a trust anchor the operator chose; Go does not read
		// its key usage and neither do we.
		if !root && c.KeyUsage&x509.KeyUsageCertSign == 0 {
			return fmt.Errorf("%s lacks the keyCertSign key usage", what)
		}
		if err := identity.CheckSigningCertificate(c, td); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	return nil
}

func hasExtension(c *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	for _, e := range c.Extensions {
		if e.Id.Equal(oid) {
			return true
		}
	}
	return false
}

// ekuNames lists a certificate's extended key usages for an error.
func ekuNames(c *x509.Certificate) string {
	names := map[x509.ExtKeyUsage]string{
		x509.ExtKeyUsageAny:             "any",
		x509.ExtKeyUsageServerAuth:      "serverAuth",
		x509.ExtKeyUsageClientAuth:      "clientAuth",
		x509.ExtKeyUsageCodeSigning:     "codeSigning",
		x509.ExtKeyUsageEmailProtection: "emailProtection",
		x509.ExtKeyUsageTimeStamping:    "timeStamping",
		x509.ExtKeyUsageOCSPSigning:     "OCSPSigning",
	}
	var out []string
	for _, u := range c.ExtKeyUsage {
		if n, ok := names[u]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("#%d", u))
		}
	}
	for _, oid := range c.UnknownExtKeyUsage {
		out = append(out, oid.String())
	}
	return "[" + strings.Join(out, " ") + "]"
}
