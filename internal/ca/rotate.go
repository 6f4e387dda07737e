package ca

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// Next is the material of a root rotation: a new root and its key, and the
// new key's certificate signed by the current CA (the cross-signed
// intermediate). While peers hold only the old root, leaves signed by the
// new key verify through the cross-signed certificate; peers that hold the
// new root verify them directly. Both certificates have the same subject
// and key, so either path is a valid chain.
type Next struct {
	RootPEM, CrossPEM, KeyPEM []byte
}

// Rotate makes the next root of c's trust domain and cross-signs its key
// with c. c must be a CA that may sign CA certificates (the built-in root
// can; an imported intermediate limited by a path length of 0 cannot).
func (c *CA) Rotate(now time.Time) (*Next, error) {
	if c.cert.MaxPathLen == 0 && c.cert.MaxPathLenZero {
		return nil, errors.New("the current CA may not sign CA certificates (path length 0)")
	}
	rootPEM, keyPEM, err := Generate(c.trustDomain, now)
	if err != nil {
		return nil, err
	}
	roots, err := ParseCertificates(rootPEM)
	if err != nil {
		return nil, err
	}
	root := roots[0]
	key, err := ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	cross := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               root.Subject,
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              root.NotAfter,
		KeyUsage:              root.KeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  root.URIs,
		SubjectKeyId:          root.SubjectKeyId,
		AuthorityKeyId:        c.cert.SubjectKeyId,
	}
	if c.cert.NotAfter.Before(cross.NotAfter) {
		cross.NotAfter = c.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, cross, c.cert, key.Public(), c.key)
	if err != nil {
		return nil, fmt.Errorf("cross-sign the new root: %w", err)
	}
	return &Next{RootPEM: rootPEM, CrossPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyPEM: keyPEM}, nil
}

// LoadNext builds the CA that signs with a rotation's new key. With
// crossPEM, leaves carry the cross-signed certificate, for peers that
// hold only the old root; without it (once the old root is retired), the
// new root signs alone.
func LoadNext(trustDomain string, rootPEM, crossPEM, keyPEM []byte) (*CA, error) {
	if len(crossPEM) == 0 {
		return Load(trustDomain, rootPEM, keyPEM)
	}
	roots, err := ParseCertificates(rootPEM)
	if err != nil {
		return nil, fmt.Errorf("new root: %w", err)
	}
	c, err := load(trustDomain, crossPEM, keyPEM, time.Now(), false)
	if err != nil {
		return nil, fmt.Errorf("cross-signed certificate: %w", err)
	}
	if !bytes.Equal(c.cert.RawSubject, roots[0].RawSubject) || !publicKeysEqual(c.cert.PublicKey, roots[0].PublicKey) {
		return nil, errors.New("the cross-signed certificate is not the new root's key and subject")
	}
	// The anchor of this CA is the new root; the cross-signed certificate
	// travels with every leaf.
	c.roots = roots[:1]
	return c, nil
}

// Roots returns the CA's trust anchors.
func (c *CA) Roots() []*x509.Certificate { return c.roots }
