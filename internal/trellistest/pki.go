package trellistest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
)

// CA is a real CA for tests.
type CA struct {
	*ca.CA
	CertPEM, KeyPEM []byte
}

// NewCA creates a fresh root CA for trustDomain.
func NewCA(t testing.TB, trustDomain string) *CA {
	t.Helper()
	certPEM, keyPEM, err := ca.Generate(trustDomain, time.Now())
	if err != nil {
		t.Fatalf("generate ca: %v", err)
	}
	c, err := ca.Load(trustDomain, certPEM, keyPEM)
	if err != nil {
		t.Fatalf("load ca: %v", err)
	}
	return &CA{CA: c, CertPEM: certPEM, KeyPEM: keyPEM}
}

// SVID issues a certificate for service with the given TTL (0: default).
func (c *CA) SVID(t testing.TB, service string, ttl time.Duration) *tls.Certificate {
	t.Helper()
	id, err := identity.New(c.TrustDomain(), service)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	chainPEM, err := c.SignSVID(ca.SignRequest{CSR: csr, ID: id, TTL: ttl})
	if err != nil {
		t.Fatalf("sign svid: %v", err)
	}
	keyPEM, err := certs.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := certs.KeyPair(chainPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// Bundle returns the CA's trust bundle.
func (c *CA) Bundle(t testing.TB) *certs.Bundle {
	t.Helper()
	b, err := certs.NewBundle(c.TrustDomain(), c.RootsPEM())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Source returns a certs.Source holding an SVID for service and the CA's bundle.
func (c *CA) Source(t testing.TB, service string) *certs.Source {
	t.Helper()
	s := &certs.Source{}
	s.SetCertificate(c.SVID(t, service, 0))
	s.SetBundle(c.Bundle(t))
	return s
}

// Intermediate makes an intermediate CA certificate for key, signed by root,
// and returns the key and certificate in PEM.
func Intermediate(t testing.TB, root *CA, key *ecdsa.PrivateKey) (keyPEM, certPEM []byte) {
	t.Helper()
	rootKey, err := ca.ParsePrivateKey(root.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "intermediate"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Certificate(), &key.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err = certs.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return keyPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// KeyPEM returns the private key of cert in PEM.
func KeyPEM(t testing.TB, cert *tls.Certificate) []byte {
	t.Helper()
	keyPEM, err := certs.EncodeKey(cert.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	return keyPEM
}
