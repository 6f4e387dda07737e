package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"sync"
	"time"
)

// Edge certificates serve clients outside the mesh: browsers, curl, load
// balancers. They carry DNS names, not SPIFFE IDs, and come from files
// (reloaded when the files change), from the mesh CA, or are self-signed
// at start.

// EdgeServerConfig returns a TLS server configuration for non-mesh clients:
// TLS 1.2 or later, with only forward-secret AEAD cipher suites for 1.2 (1.3
// suites are all of that kind). With clientCAs set, clients must present a
// certificate that chains to them.
func EdgeServerConfig(get func(*tls.ClientHelloInfo) (*tls.Certificate, error), clientCAs *x509.CertPool, nextProtos ...string) *tls.Config {
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: get,
		NextProtos:     nextProtos,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
	}
	if clientCAs != nil {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = clientCAs
	}
	return cfg
}

// SelfSigned makes a key and a self-signed certificate for names (DNS names
// or IP addresses), valid from an hour ago for a year. The key never leaves
// the returned certificate.
func SelfSigned(names []string, now time.Time) (*tls.Certificate, error) {
	if len(names) == 0 {
		return nil, errors.New("self-signed certificate: no DNS name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Trellis self-signed"}, CommonName: names[0]},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-signed certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// FileCert serves a certificate and key from PEM files and reloads them
// when they change. A handshake looks at the files at most once per
// Interval; a replacement that does not parse, or whose key does not match,
// is logged and the last good pair kept, so a half-written file never
// takes the listener down.
type FileCert struct {
	CertFile, KeyFile string
	// Interval between looks at the files; default 1s.
	Interval time.Duration
	// Logger; nil discards.
	Logger *slog.Logger

	mu      sync.Mutex
	cur     *tls.Certificate
	certPEM []byte
	keyPEM  []byte
	checked time.Time
}

// Load reads the files; it fails if they do not hold a matching pair, so a
// bad configuration is refused at start.
func (f *FileCert) Load() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.loadLocked(time.Now())
}

func (f *FileCert) loadLocked(now time.Time) error {
	f.checked = now
	certPEM, err := os.ReadFile(f.CertFile)
	if err != nil {
		return fmt.Errorf("certificate file: %w", err)
	}
	keyPEM, err := os.ReadFile(f.KeyFile)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	if f.cur != nil && bytes.Equal(certPEM, f.certPEM) && bytes.Equal(keyPEM, f.keyPEM) {
		return nil
	}
	c, err := KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("%s and %s: %w", f.CertFile, f.KeyFile, err)
	}
	if f.Logger != nil {
		WarnIfShared(f.Logger, "edge key file", f.KeyFile)
	}
	f.cur, f.certPEM, f.keyPEM = c, certPEM, keyPEM
	return nil
}

// GetCertificate is a tls.Config.GetCertificate hook.
func (f *FileCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	interval := f.Interval
	if interval <= 0 {
		interval = time.Second
	}
	if now := time.Now(); now.Sub(f.checked) >= interval {
		old := f.cur
		if err := f.loadLocked(now); err != nil {
			if f.Logger != nil {
				f.Logger.Warn("keep the last good edge certificate", "err", err)
			}
		} else if old != nil && f.cur != old && f.Logger != nil {
			f.Logger.Info("edge certificate reloaded", "file", f.CertFile, "subject", f.cur.Leaf.Subject.CommonName, "expires", f.cur.Leaf.NotAfter)
		}
	}
	if f.cur == nil {
		return nil, errors.New("no edge certificate loaded")
	}
	return f.cur, nil
}
