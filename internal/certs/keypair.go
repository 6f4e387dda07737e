package certs

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// KeyPair parses a PEM chain (leaf first) and its PEM private key into a
// certificate with Leaf set, ready for a Source or a tls.Config.
func KeyPair(chainPEM, keyPEM []byte) (*tls.Certificate, error) {
	c, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if _, err := LeafOf(&c); err != nil {
		return nil, err
	}
	return &c, nil
}

// EncodeKey returns key as PKCS#8 PEM.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
