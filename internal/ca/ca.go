package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/identity"
)

// DefaultSVIDTTL is the lifetime of a workload certificate when none is set.
const DefaultSVIDTTL = 24 * time.Hour

// clockSkew backdates certificates so that a peer whose clock is a little
// behind still accepts them.
const clockSkew = time.Minute

// CA signs workload certificates for one trust domain.
// It is safe for concurrent use: all fields are read-only after Load.
type CA struct {
	trustDomain string
	cert        *x509.Certificate   // the signing certificate
	chain       []*x509.Certificate // intermediates above cert, excluding the root
	roots       []*x509.Certificate // trust anchors: the self-signed top of the chain
	key         crypto.Signer
}

// Generate creates a new self-signed root CA for trustDomain and returns its
// certificate and private key in PEM. The root is valid for ten years.
func Generate(trustDomain string, now time.Time) (certPEM, keyPEM []byte, err error) {
	if err := identity.ValidateTrustDomain(trustDomain); err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ca key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Trellis"}, CommonName: "Trellis CA " + trustDomain},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
		SubjectKeyId:          keyID(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("self-sign ca: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode ca key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// Load builds a CA from PEM. certPEM holds the signing certificate first,
// then the intermediates above it and the self-signed root they chain to
// (as a private CA, Vault or `cat trellis-ca.pem root.pem` hands them
// out): the root is the trust anchor every peer holds, and the
// certificates between it and the leaves travel in every handshake.
// trustDomain must be set; an imported CA need not carry a SPIFFE ID of
// its own, but may carry none other than spiffe://<trustDomain>, with no
// path, as the X509-SVID standard requires of signing certificates.
//
// A chain Trellis could not sign with, or whose leaves some peer would
// refuse, is refused here with the reason and the certificate it is
// about: not a CA, no keyCertSign, outside its validity, a key that is not
// the signing certificate's, a path length that forbids the certificates
// below it, no root at the top.
func Load(trustDomain string, certPEM, keyPEM []byte) (*CA, error) {
	return load(trustDomain, certPEM, keyPEM, time.Now(), true)
}

// load is Load; a chain need not end in a self-signed root when
// wantRoot is false (LoadNext's cross-signed certificate, whose anchor is
// given apart).
func load(trustDomain string, certPEM, keyPEM []byte, now time.Time, wantRoot bool) (*CA, error) {
	if err := identity.ValidateTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ca certificate: %w", err)
	}
	key, err := ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca key: %w", err)
	}
	c := certs[0]
	if !c.IsCA || !c.BasicConstraintsValid {
		return nil, fmt.Errorf("ca certificate %s is not a CA: its basicConstraints must say CA:TRUE", describe(c))
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("ca certificate %s may not sign certificates: its keyUsage must include keyCertSign", describe(c))
	}
	if !publicKeysEqual(c.PublicKey, key.Public()) {
		return nil, fmt.Errorf("ca key does not match ca certificate %s (the key of another certificate?)", describe(c))
	}
	for i := 0; i+1 < len(certs); i++ {
		if err := certs[i].CheckSignatureFrom(certs[i+1]); err != nil {
			return nil, fmt.Errorf("ca chain: certificate %d %s is not signed by certificate %d %s: %w",
				i+1, describe(certs[i]), i+2, describe(certs[i+1]), err)
		}
	}
	// Refuse now a chain whose SVIDs every peer would refuse (see
	// certs.VerifySPIFFE): signing certificates carry at most the trust
	// domain's own ID, and those between this one and the anchor may sign.
	for i, cc := range certs {
		if err := identity.CheckSigningCertificate(cc, trustDomain); err != nil {
			return nil, fmt.Errorf("ca chain: certificate %d: %w", i+1, err)
		}
		if i > 0 && i < len(certs)-1 && (!cc.IsCA || cc.KeyUsage&x509.KeyUsageCertSign == 0) {
			return nil, fmt.Errorf("ca chain: certificate %d is not a CA with the keyCertSign key usage", i+1)
		}
		switch {
		case now.After(cc.NotAfter):
			return nil, fmt.Errorf("ca chain: certificate %d %s expired at %s", i+1, describe(cc), cc.NotAfter.UTC().Format(time.RFC3339))
		case now.Before(cc.NotBefore):
			return nil, fmt.Errorf("ca chain: certificate %d %s is not valid before %s (check the clock)", i+1, describe(cc), cc.NotBefore.UTC().Format(time.RFC3339))
		}
		// i CA certificates lie between cc and the leaves this CA signs;
		// a path length under that makes every peer refuse them.
		if cc.BasicConstraintsValid && cc.MaxPathLen >= 0 && (cc.MaxPathLen > 0 || cc.MaxPathLenZero) && i > cc.MaxPathLen {
			return nil, fmt.Errorf("ca chain: certificate %d %s has pathlen:%d, which forbids the %d CA certificate(s) below it: "+
				"have it issue Trellis's certificate directly, or reissue it with a larger pathlen", i+1, describe(cc), cc.MaxPathLen, i)
		}
	}
	top := certs[len(certs)-1]
	if wantRoot && !selfSigned(top) {
		return nil, fmt.Errorf("ca chain ends in %s, which is not self-signed: append the root that signed it "+
			"(cat trellis-ca.pem root.pem > chain.pem); peers trust the root, and every leaf carries the certificates below it", describe(top))
	}
	ca := &CA{trustDomain: trustDomain, cert: c, key: key, roots: []*x509.Certificate{top}}
	if len(certs) > 2 {
		// The anchor is held by every peer; only what lies between travels.
		ca.chain = certs[1 : len(certs)-1]
	}
	if err := ca.probe(now); err != nil {
		return nil, err
	}
	return ca, nil
}

// probe signs a throwaway SVID and verifies it as a peer would, for the
// constraints Load does not check one by one (extended key usages or name
// constraints on the chain).
func (ca *CA) probe(now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl, err := ca.leafTemplate(&key.PublicKey, time.Hour, now)
	if err != nil {
		return err
	}
	id := &url.URL{Scheme: "spiffe", Host: ca.trustDomain, Path: "/svc/probe"}
	tmpl.URIs = []*url.URL{id}
	chainPEM, err := ca.sign(tmpl, &key.PublicKey)
	if err != nil {
		return err
	}
	chain, err := ParseCertificates(chainPEM)
	if err != nil {
		return err
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range ca.roots {
		roots.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		opts := x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{u}}
		if _, err := chain[0].Verify(opts); err != nil {
			return fmt.Errorf("ca chain: an SVID it signs (%s) would not verify: %w", id, err)
		}
	}
	return nil
}

// describe names a certificate in an error: its subject, which is what
// `openssl x509 -noout -subject` shows.
func describe(c *x509.Certificate) string {
	return fmt.Sprintf("%q", c.Subject.String())
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// TrustDomain returns the CA's trust domain.
func (ca *CA) TrustDomain() string { return ca.trustDomain }

// Certificate returns the signing certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// RootsPEM returns the trust anchors in PEM, the bundle proxies verify with.
func (ca *CA) RootsPEM() []byte {
	var b bytes.Buffer
	for _, r := range ca.roots {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})
	}
	return b.Bytes()
}

// SignRequest says what to sign.
type SignRequest struct {
	// CSR is a DER or PEM PKCS#10 request; only its public key is used.
	CSR []byte
	// ID is the identity to put in the certificate's one URI SAN.
	ID identity.ID
	// TTL is the lifetime; zero means DefaultSVIDTTL. It is cut to the CA's
	// own expiry.
	TTL time.Duration
	// Now is the issue time; zero means time.Now.
	Now time.Time
}

// SignSVID verifies the CSR's signature and issues an X509-SVID for req.ID.
// It returns the leaf followed by the CA chain up to (not including) the
// root, in PEM.
func (ca *CA) SignSVID(req SignRequest) ([]byte, error) {
	if req.ID.TrustDomain() != ca.trustDomain {
		return nil, fmt.Errorf("sign %s: trust domain is not %q", req.ID, ca.trustDomain)
	}
	pub, err := csrPublicKey(req.CSR)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", req.ID, err)
	}
	tmpl, err := ca.leafTemplate(pub, req.TTL, req.Now)
	if err != nil {
		return nil, err
	}
	tmpl.Subject = pkix.Name{Organization: []string{"Trellis"}, CommonName: req.ID.Service()}
	tmpl.URIs = []*url.URL{req.ID.URL()}
	return ca.sign(tmpl, pub)
}

// EdgeRequest says what to put in an edge certificate: a service's server
// certificate for clients outside the mesh.
type EdgeRequest struct {
	// CSR is a DER or PEM PKCS#10 request; only its public key is used.
	CSR []byte
	// Service is the service the certificate is for (its subject).
	Service string
	// DNSNames are the certificate's names; the caller has checked them.
	DNSNames []string
	TTL      time.Duration // zero means DefaultSVIDTTL
	Now      time.Time     // zero means time.Now
}

// SignEdge issues an edge certificate: DNS names only, server
// authentication only, and no SPIFFE ID, so that the key behind a
// listener that faces the outside cannot act as the service inside the
// mesh.
func (ca *CA) SignEdge(req EdgeRequest) ([]byte, error) {
	if len(req.DNSNames) == 0 {
		return nil, fmt.Errorf("sign edge certificate for %s: no DNS name", req.Service)
	}
	pub, err := csrPublicKey(req.CSR)
	if err != nil {
		return nil, fmt.Errorf("sign edge certificate for %s: %w", req.Service, err)
	}
	tmpl, err := ca.leafTemplate(pub, req.TTL, req.Now)
	if err != nil {
		return nil, err
	}
	tmpl.Subject = pkix.Name{Organization: []string{"Trellis"}, OrganizationalUnit: []string{req.Service}, CommonName: req.DNSNames[0]}
	tmpl.DNSNames = req.DNSNames
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	return ca.sign(tmpl, pub)
}

// ServingRequest describes a TLS server certificate for the control plane.
type ServingRequest struct {
	PublicKey crypto.PublicKey
	DNSNames  []string
	IPs       []net.IP
	TTL       time.Duration
	Now       time.Time
}

// SignServing issues the control plane's server certificate: DNS and IP
// SANs for the address clients dial, the server's SPIFFE ID
// (spiffe://<td>/trellis/server), which clients require and which no
// workload or edge certificate can carry, and server and client
// authentication: servers present it to each other when they share
// traffic summaries (a proxy refuses it: it is no workload's SVID).
func (ca *CA) SignServing(req ServingRequest) ([]byte, error) {
	tmpl, err := ca.leafTemplate(req.PublicKey, req.TTL, req.Now)
	if err != nil {
		return nil, err
	}
	tmpl.Subject = pkix.Name{Organization: []string{"Trellis"}, CommonName: "trellis-server"}
	tmpl.DNSNames = req.DNSNames
	tmpl.IPAddresses = req.IPs
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	tmpl.URIs = []*url.URL{ServerID(ca.trustDomain)}
	return ca.sign(tmpl, req.PublicKey)
}

// ServerID returns the control plane's SPIFFE ID in trustDomain.
func ServerID(trustDomain string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: v1.ServerIDPath}
}

func (ca *CA) leafTemplate(pub crypto.PublicKey, ttl time.Duration, now time.Time) (*x509.Certificate, error) {
	if now.IsZero() {
		now = time.Now()
	}
	if ttl <= 0 {
		ttl = DefaultSVIDTTL
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		usage |= x509.KeyUsageKeyEncipherment
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          keyID(pub),
		AuthorityKeyId:        ca.cert.SubjectKeyId,
	}, nil
}

func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	var b bytes.Buffer
	_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	// The signing certificate travels with the leaf unless it is itself a
	// root every peer already holds.
	if len(ca.chain) > 0 || !ca.isRoot(ca.cert) {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	}
	for _, c := range ca.chain {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes(), nil
}

func (ca *CA) isRoot(c *x509.Certificate) bool {
	for _, r := range ca.roots {
		if r.Equal(c) {
			return true
		}
	}
	return false
}

func csrPublicKey(b []byte) (crypto.PublicKey, error) {
	if p, _ := pem.Decode(b); p != nil {
		if p.Type != "CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("pem block is %q, want CERTIFICATE REQUEST", p.Type)
		}
		b = p.Bytes
	}
	csr, err := x509.ParseCertificateRequest(b)
	if err != nil {
		return nil, fmt.Errorf("parse csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr signature: %w", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("csr key: curve %s is not P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("csr key: RSA %d bits is under 2048", k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("csr key: unsupported type %T", k)
	}
	return csr.PublicKey, nil
}

// ParseCertificates parses every CERTIFICATE block in b.
func ParseCertificates(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var p *pem.Block
		p, b = pem.Decode(b)
		if p == nil {
			break
		}
		if p.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(p.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return out, nil
}

// ParsePrivateKey parses a PEM PKCS#8, EC or PKCS#1 private key; EC
// PARAMETERS blocks before it are skipped.
func ParsePrivateKey(b []byte) (crypto.Signer, error) {
	p, rest := pem.Decode(b)
	// `openssl ecparam -genkey` writes the curve's parameters first.
	for p != nil && p.Type == "EC PARAMETERS" {
		p, rest = pem.Decode(rest)
	}
	if p == nil {
		return nil, errors.New("no PEM block found")
	}
	var (
		k   any
		err error
	)
	switch p.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(p.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(p.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(p.Bytes)
	default:
		return nil, fmt.Errorf("pem block is %q, not a private key", p.Type)
	}
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key type %T cannot sign", k)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type eq interface{ Equal(crypto.PublicKey) bool }
	x, ok := a.(eq)
	return ok && x.Equal(b)
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func keyID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(der)
	return sum[:20]
}
