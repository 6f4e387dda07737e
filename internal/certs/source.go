package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// Source holds the current certificate and bundle of one workload. The zero
// value is empty; handshakes fail until both are set. It is safe for
// concurrent use.
type Source struct {
	cert   atomic.Pointer[tls.Certificate]
	bundle atomic.Pointer[Bundle]
	// Now returns the time used to verify peers; nil means time.Now.
	Now func() time.Time
}

// SetCertificate replaces the certificate served from the next handshake on.
// cert.Leaf must be set.
func (s *Source) SetCertificate(cert *tls.Certificate) { s.cert.Store(cert) }

// Certificate returns the current certificate, or nil.
func (s *Source) Certificate() *tls.Certificate { return s.cert.Load() }

// SetBundle replaces the trust bundle used from the next handshake on.
func (s *Source) SetBundle(b *Bundle) { s.bundle.Store(b) }

// Bundle returns the current trust bundle, or nil.
func (s *Source) Bundle() *Bundle { return s.bundle.Load() }

// Authorizer decides whether a verified peer identity may proceed.
type Authorizer func(identity.ID) error

// ExpectService authorizes only the given service, in any trust domain the
// bundle accepts.
func ExpectService(service string) Authorizer {
	return func(id identity.ID) error {
		if id.Service() != service {
			return fmt.Errorf("peer is %s, want service %q", id, service)
		}
		return nil
	}
}

var errNotReady = errors.New("no certificate or trust bundle yet")

func (s *Source) getCertificate() (*tls.Certificate, error) {
	c := s.cert.Load()
	if c == nil {
		return nil, errNotReady
	}
	return c, nil
}

func (s *Source) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// verify is a tls.Config.VerifyConnection hook: it checks the peer SVID
// against the current bundle and then asks authorize. It runs on resumed
// sessions too, so a resumed peer is judged by today's bundle.
func (s *Source) verify(cs tls.ConnectionState, authorize Authorizer) error {
	b := s.bundle.Load()
	if b == nil {
		return errNotReady
	}
	id, err := VerifySVID(cs.PeerCertificates, b, s.now())
	if err != nil {
		return err
	}
	if authorize != nil {
		if err := authorize(id); err != nil {
			return fmt.Errorf("%w: %w", ErrUnauthorized, err)
		}
	}
	return nil
}

// ServerConfig returns a TLS 1.3 server config that requires a client SVID,
// verified against the current bundle and passed to authorize.
func (s *Source) ServerConfig(authorize Authorizer, nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		NextProtos:     nextProtos,
		ClientAuth:     tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.getCertificate() },
		VerifyConnection: func(cs tls.ConnectionState) error {
			return s.verify(cs, authorize)
		},
	}
}

// ClientConfig returns a TLS 1.3 client config that presents the current
// SVID and accepts only a server whose SVID authorize allows. It carries a
// session cache, so that a reconnect may skip the full handshake; the
// sidecar's pools, which l4.Guard watches, drop it: a resumed session
// would hide which of our leaves the connection rests on.
func (s *Source) ClientConfig(authorize Authorizer, nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: nextProtos,
		// Verification is VerifyConnection's: the server's name is its SPIFFE
		// ID, not a DNS name, so the default hostname check does not apply.
		InsecureSkipVerify:   true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return s.getCertificate() },
		VerifyConnection: func(cs tls.ConnectionState) error {
			return s.verify(cs, authorize)
		},
		ClientSessionCache: tls.NewLRUClientSessionCache(256),
	}
}

// PeerID returns the identity of a completed handshake's peer, read from
// the leaf's signed SAN bytes as VerifySVID reads it. It does not verify
// the chain: only call it on a connection whose config verified it (the
// configs above do, in VerifyConnection, resumptions included).
func PeerID(cs tls.ConnectionState) (identity.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return identity.ID{}, ErrNoCertificate
	}
	return identity.FromCertificate(cs.PeerCertificates[0])
}

// LeafOf parses and attaches the leaf of cert if it is missing.
func LeafOf(cert *tls.Certificate) (*x509.Certificate, error) {
	if cert.Leaf != nil {
		return cert.Leaf, nil
	}
	if len(cert.Certificate) == 0 {
		return nil, errors.New("empty certificate")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	cert.Leaf = leaf
	return leaf, nil
}
