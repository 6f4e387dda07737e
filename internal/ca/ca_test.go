package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

func TestSignSVIDShape(t *testing.T) {
	c := trellistest.NewCA(t, "trellis.local")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// A hostile CSR asks for a CA certificate, extra SANs and another identity;
	// the CA must ignore all of it and take only the key.
	evil, _ := url.Parse("spiffe://trellis.local/svc/admin")
	bc, _ := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:         pkix.Name{CommonName: "admin"},
		DNSNames:        []string{"evil.example"},
		URIs:            []*url.URL{evil},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := identity.New("trellis.local", "greeter")
	chain, err := c.SignSVID(ca.SignRequest{CSR: csr, ID: id, TTL: time.Hour})
	if err != nil {
		t.Fatalf("SignSVID: %v", err)
	}
	certs, err := ca.ParseCertificates(chain)
	if err != nil {
		t.Fatal(err)
	}
	leaf := certs[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://trellis.local/svc/greeter" {
		t.Errorf("URI SANs = %v, want exactly [spiffe://trellis.local/svc/greeter]", leaf.URIs)
	}
	if len(leaf.DNSNames) != 0 {
		t.Errorf("DNS SANs = %v, want none (copied from CSR)", leaf.DNSNames)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Errorf("IsCA = %v, BasicConstraintsValid = %v; want false, true", leaf.IsCA, leaf.BasicConstraintsValid)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v, want digitalSignature only", leaf.KeyUsage)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < time.Hour || d > time.Hour+2*time.Minute {
		t.Errorf("lifetime = %v, want about 1h", d)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Error("certificate key is not the CSR's key")
	}
	if err := leaf.CheckSignatureFrom(c.Certificate()); err != nil {
		t.Errorf("leaf not signed by CA: %v", err)
	}
}

func TestSignSVIDRejects(t *testing.T) {
	c := trellistest.NewCA(t, "trellis.local")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	other, _ := identity.New("other.domain", "greeter")
	if _, err := c.SignSVID(ca.SignRequest{CSR: csr, ID: other}); err == nil {
		t.Error("signed an identity of another trust domain")
	}
	bad := append([]byte{}, csr...)
	bad[len(bad)-5] ^= 0xff // break the signature
	id, _ := identity.New("trellis.local", "greeter")
	if _, err := c.SignSVID(ca.SignRequest{CSR: bad, ID: id}); err == nil {
		t.Error("signed a CSR with a broken signature")
	}
	if _, err := c.SignSVID(ca.SignRequest{CSR: []byte("garbage"), ID: id}); err == nil {
		t.Error("signed garbage")
	}
}

func TestLoadIntermediate(t *testing.T) {
	root := trellistest.NewCA(t, "trellis.local")
	// An intermediate signed by the root, as an imported Private CA would be.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keyPEM, interPEM := trellistest.Intermediate(t, root, key)
	c, err := ca.Load("trellis.local", append(interPEM, root.CertPEM...), keyPEM)
	if err != nil {
		t.Fatalf("Load intermediate: %v", err)
	}
	if got, want := string(c.RootsPEM()), string(root.CertPEM); got != want {
		t.Errorf("roots are not the root CA")
	}
	id, _ := identity.New("trellis.local", "a")
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k2)
	chain, err := c.SignSVID(ca.SignRequest{CSR: csr, ID: id})
	if err != nil {
		t.Fatal(err)
	}
	certs, _ := ca.ParseCertificates(chain)
	if len(certs) != 2 {
		t.Fatalf("chain has %d certificates, want leaf + intermediate", len(certs))
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root.CertPEM)
	inter := x509.NewCertPool()
	inter.AddCert(certs[1])
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("leaf does not verify to root through intermediate: %v", err)
	}
	if _, err := ca.Load("trellis.local", root.CertPEM, keyPEM); err == nil {
		t.Error("Load accepted a key that does not match the certificate")
	}
}

// An edge certificate carries the checked DNS names and nothing a CSR asks
// for, no SPIFFE ID (it must not act as the service in the mesh), and
// server authentication only.
func TestSignEdgeShape(t *testing.T) {
	c := trellistest.NewCA(t, "trellis.local")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	evil, _ := url.Parse("spiffe://trellis.local/svc/admin")
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		DNSNames: []string{"evil.example"}, URIs: []*url.URL{evil},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.SignEdge(ca.EdgeRequest{CSR: csr, Service: "shop", DNSNames: []string{"shop.example.test", "*.shop.example.test"}, TTL: time.Hour})
	if err != nil {
		t.Fatalf("SignEdge: %v", err)
	}
	certs, err := ca.ParseCertificates(chain)
	if err != nil {
		t.Fatal(err)
	}
	leaf := certs[0]
	if len(leaf.URIs) != 0 {
		t.Errorf("URI SANs = %v, want none", leaf.URIs)
	}
	if !slices.Equal(leaf.DNSNames, []string{"shop.example.test", "*.shop.example.test"}) {
		t.Errorf("DNS SANs = %v", leaf.DNSNames)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("ExtKeyUsage = %v, want server auth only", leaf.ExtKeyUsage)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.Certificate())
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "api.shop.example.test", Roots: roots}); err != nil {
		t.Errorf("verify for a wildcard-covered name: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("an edge certificate verified as a client certificate")
	}
	if _, err := c.SignEdge(ca.EdgeRequest{CSR: csr, Service: "shop"}); err == nil {
		t.Error("signed an edge certificate with no name")
	}
}

// The serving certificate carries the server's SPIFFE ID and both
// usages: servers present it to each other as clients when they share
// traffic summaries. It is no workload's SVID.
func TestSignServingShape(t *testing.T) {
	c := trellistest.NewCA(t, "trellis.local")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := c.SignServing(ca.ServingRequest{PublicKey: &key.PublicKey, DNSNames: []string{"localhost"}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ca.ParseCertificates(chain)
	if err != nil {
		t.Fatal(err)
	}
	leaf := certs[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://trellis.local/trellis/server" {
		t.Errorf("URI SANs = %v, want the server ID", leaf.URIs)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage = %v, want server and client auth", leaf.ExtKeyUsage)
	}
	id, err := identity.SPIFFEIDFromCertificate(leaf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := id.Workload(); err == nil {
		t.Errorf("%s reads as a workload ID", id)
	}
}
