package ca_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// caExtensions are the only extensions the CA puts in a leaf; it sets
// each itself and copies none from the CSR.
var caExtensions = []string{
	"2.5.29.14", // subject key identifier
	"2.5.29.35", // authority key identifier
	"2.5.29.15", // key usage
	"2.5.29.37", // extended key usage
	"2.5.29.19", // basic constraints
	"2.5.29.17", // subject alternative names
}

// FuzzSignCSR: arbitrary bytes as a CSR, for an SVID of one service and
// for an edge certificate. Nothing panics, and whatever is signed keeps
// the CA's rules: the CSR was well formed, correctly signed and of an
// allowed key, and only its key was taken; an SVID names exactly the
// identity asked for (never one the CSR asks for) and verifies as an
// X509-SVID of it; an edge certificate has the DNS names asked for, no
// SPIFFE ID and server authentication only.
func FuzzSignCSR(f *testing.F) {
	for _, c := range seedCSRs(f) {
		f.Add(c, "web")
	}
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"), "web")
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00}, "web")
	f.Add([]byte{}, "admin")
	c := trellistest.NewCA(f, "trellis.local")
	bundle := c.Bundle(f)
	f.Fuzz(func(t *testing.T, csrBytes []byte, service string) {
		id, err := identity.New("trellis.local", service)
		if err != nil {
			return
		}
		now := time.Now()
		if chain, err := c.SignSVID(ca.SignRequest{CSR: csrBytes, ID: id, TTL: time.Hour, Now: now}); err == nil {
			leaf, parsed := checkSigned(t, c, csrBytes, chain)
			if got, err := certs.VerifySVID(parsed, bundle, now); err != nil || got != id {
				t.Fatalf("signed SVID verifies as %v, %v; want %v", got, err, id)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Fatalf("SVID for %v names %v %v %v %v", id, leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
			}
			if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Fatalf("SVID extended key usage %v", leaf.ExtKeyUsage)
			}
		}
		names := []string{"edge.example"}
		if chain, err := c.SignEdge(ca.EdgeRequest{CSR: csrBytes, Service: id.Service(), DNSNames: names, TTL: time.Hour, Now: now}); err == nil {
			leaf, _ := checkSigned(t, c, csrBytes, chain)
			if len(leaf.URIs) != 0 || !slices.Equal(leaf.DNSNames, names) || len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Fatalf("edge certificate names %v %v %v %v, want only %v", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses, names)
			}
			if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
				t.Fatalf("edge extended key usage %v", leaf.ExtKeyUsage)
			}
		}
	})
}

// checkSigned checks what holds for every leaf the CA signs from
// csrBytes, and returns it with its chain.
func checkSigned(t *testing.T, c *trellistest.CA, csrBytes, chainPEM []byte) (*x509.Certificate, []*x509.Certificate) {
	t.Helper()
	chain, err := ca.ParseCertificates(chainPEM)
	if err != nil || len(chain) == 0 {
		t.Fatalf("signed chain does not parse: %v", err)
	}
	leaf := chain[0]
	if err := leaf.CheckSignatureFrom(c.Certificate()); err != nil {
		t.Fatalf("leaf not signed by the CA: %v", err)
	}
	der := csrBytes
	if p, _ := pem.Decode(csrBytes); p != nil {
		if p.Type != "CERTIFICATE REQUEST" {
			t.Fatalf("signed from a PEM block of type %q", p.Type)
		}
		der = p.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatalf("signed from a CSR that does not parse: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("signed from a CSR whose signature fails: %v", err)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if k, ok := leaf.PublicKey.(equaler); !ok || !k.Equal(csr.PublicKey) {
		t.Fatalf("leaf key %T is not the CSR's", leaf.PublicKey)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			t.Fatalf("signed a key on curve %s", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			t.Fatalf("signed an RSA key of %d bits", k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		t.Fatalf("signed a %T key", k)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Fatalf("leaf IsCA %v, basic constraints valid %v", leaf.IsCA, leaf.BasicConstraintsValid)
	}
	if leaf.KeyUsage&^(x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment) != 0 {
		t.Fatalf("leaf key usage %v", leaf.KeyUsage)
	}
	if len(leaf.UnknownExtKeyUsage) != 0 {
		t.Fatalf("leaf has unknown extended key usages %v", leaf.UnknownExtKeyUsage)
	}
	for _, e := range leaf.Extensions {
		if !slices.Contains(caExtensions, e.Id.String()) {
			t.Fatalf("leaf has extension %v, which the CA does not set", e.Id)
		}
	}
	if leaf.NotAfter.After(c.Certificate().NotAfter) {
		t.Fatalf("leaf outlives the CA")
	}
	return leaf, chain
}

// seedCSRs are well-formed CSRs that ask for more than a key: another
// identity, DNS and IP names, CA status, odd extensions; a CSR with a
// broken signature; a key on a curve the CA refuses; PEM and DER.
func seedCSRs(f *testing.F) [][]byte {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	admin, _ := url.Parse("spiffe://trellis.local/svc/admin")
	other, _ := url.Parse("spiffe://evil.example/svc/web")
	bc, _ := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	mk := func(key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			f.Fatal(err)
		}
		return der
	}
	plain := mk(p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "web"}})
	hostile := mk(p256, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "admin"},
		DNSNames: []string{"evil.example"}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)},
		EmailAddresses: []string{"a@evil.example"}, URIs: []*url.URL{admin, other},
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc},
			{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: []byte{5, 0}},
		},
	})
	broken := bytes.Clone(plain)
	broken[len(broken)-1] ^= 1
	return [][]byte{
		plain, hostile, broken,
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: hostile}),
		mk(p224, &x509.CertificateRequest{}),
		mk(edKey, &x509.CertificateRequest{URIs: []*url.URL{admin}}),
	}
}
