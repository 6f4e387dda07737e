package certs

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
)

// Fingerprint is the hex SHA-256 of a certificate's DER, how roots are
// named in the API and the CLI.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// Fingerprints returns the fingerprint of every CERTIFICATE block in
// pemBytes; blocks that do not parse are skipped.
func Fingerprints(pemBytes []byte) []string {
	var out []string
	for {
		var b *pem.Block
		b, pemBytes = pem.Decode(pemBytes)
		if b == nil {
			return out
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, Fingerprint(c))
		}
	}
}
