package trellistest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
)

// ForgeSpec describes a certificate made by hand for attack tests: every
// field is written as given, with none of the CA's rules, so that a test
// can present what an attacker with a key would.
type ForgeSpec struct {
	// URIs are the URI SANs, written byte for byte (crypto/x509 would
	// refuse or normalize some of them).
	URIs     []string
	DNSNames []string
	// EKU is the extended key usage; nil means no such extension.
	EKU      []x509.ExtKeyUsage
	KeyUsage x509.KeyUsage
	IsCA     bool
	// NotBefore and NotAfter default to a minute ago and an hour from now.
	NotBefore, NotAfter time.Time
	// Key is the certificate's key; nil means a new P-256 key.
	Key *ecdsa.PrivateKey
}

// Forged is a hand-made certificate and its key.
type Forged struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Forger returns the CA's own certificate and key, to sign forgeries with
// (as an attacker who stole them, or a test that needs the real issuer).
func (c *CA) Forger(t testing.TB) *Forged {
	t.Helper()
	key, err := ca.ParsePrivateKey(c.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &Forged{Cert: c.Certificate(), Key: key}
}

// Forge makes the certificate spec describes, signed by parent, or
// self-signed when parent is nil. It fails t if crypto/x509 cannot parse
// the result back.
func Forge(t testing.TB, spec ForgeSpec, parent *Forged) *Forged {
	t.Helper()
	f, err := ForgeErr(spec, parent)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// ForgeErr is Forge returning the error, for fuzz targets that generate
// certificates crypto/x509 may refuse to read back.
func ForgeErr(spec ForgeSpec, parent *Forged) (*Forged, error) {
	key := spec.Key
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, err
		}
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	nb, na := spec.NotBefore, spec.NotAfter
	if nb.IsZero() {
		nb = time.Now().Add(-time.Minute)
	}
	if na.IsZero() {
		na = time.Now().Add(time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "forged"},
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              spec.KeyUsage,
		ExtKeyUsage:           spec.EKU,
		IsCA:                  spec.IsCA,
		BasicConstraintsValid: true,
	}
	if len(spec.URIs) > 0 || len(spec.DNSNames) > 0 {
		san, err := marshalSAN(spec.URIs, spec.DNSNames)
		if err != nil {
			return nil, err
		}
		tmpl.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: san}}
	}
	signer, parentCert := crypto.Signer(key), tmpl
	if parent != nil {
		signer, parentCert = parent.Key, parent.Cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, &key.PublicKey, signer)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Forged{Cert: cert, Key: key}, nil
}

// marshalSAN writes a subjectAltName value with the names byte for byte.
func marshalSAN(uris, dnsNames []string) ([]byte, error) {
	var names []asn1.RawValue
	for _, d := range dnsNames {
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte(d)})
	}
	for _, u := range uris {
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(u)})
	}
	return asn1.Marshal(names)
}

// TLS returns f as a TLS certificate that presents f and then chain.
func (f *Forged) TLS(chain ...*Forged) *tls.Certificate {
	c := &tls.Certificate{Certificate: [][]byte{f.Cert.Raw}, PrivateKey: f.Key, Leaf: f.Cert}
	for _, p := range chain {
		c.Certificate = append(c.Certificate, p.Cert.Raw)
	}
	return c
}

// Chain returns f followed by chain, as a verifier receives it.
func (f *Forged) Chain(chain ...*Forged) []*x509.Certificate {
	out := []*x509.Certificate{f.Cert}
	for _, p := range chain {
		out = append(out, p.Cert)
	}
	return out
}

// SVIDSpec is what a CA-issued SVID for id carries, the start of most
// forgeries.
func SVIDSpec(id string) ForgeSpec {
	return ForgeSpec{
		URIs:     []string{id},
		KeyUsage: x509.KeyUsageDigitalSignature,
		EKU:      []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
}

// SigningSpec is what a signing certificate carries, with an optional
// SPIFFE ID.
func SigningSpec(uris ...string) ForgeSpec {
	return ForgeSpec{URIs: uris, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, IsCA: true}
}
