package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// A rotation's leaves must verify for peers that hold only the old root,
// only the new one, or both; once the old root is retired, the new root
// signs alone and the old root no longer verifies them.
func TestRotateCrossSigns(t *testing.T) {
	old := trellistest.NewCA(t, "trellis.local")
	next, err := old.Rotate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	during, err := ca.LoadNext("trellis.local", next.RootPEM, next.CrossPEM, next.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	after, err := ca.LoadNext("trellis.local", next.RootPEM, nil, next.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := certs.Fingerprint(during.Roots()[0]), certs.Fingerprints(next.RootPEM)[0]; got != want {
		t.Errorf("the rotating CA's anchor is %s, want the new root %s", got, want)
	}
	leaf := func(c *ca.CA) []*x509.Certificate {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		id, _ := identity.New("trellis.local", "web")
		chain, err := c.SignSVID(ca.SignRequest{CSR: csr, ID: id})
		if err != nil {
			t.Fatal(err)
		}
		certs, err := ca.ParseCertificates(chain)
		if err != nil {
			t.Fatal(err)
		}
		return certs
	}
	bundle := func(pems ...[]byte) *certs.Bundle {
		var all []byte
		for _, p := range pems {
			all = append(all, p...)
		}
		b, err := certs.NewBundle("trellis.local", all)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	oldRoot := old.RootsPEM()
	for _, tc := range []struct {
		name   string
		chain  []*x509.Certificate
		bundle *certs.Bundle
		ok     bool
	}{
		{"during, old bundle", leaf(during), bundle(oldRoot), true},
		{"during, both roots", leaf(during), bundle(oldRoot, next.RootPEM), true},
		{"during, new bundle", leaf(during), bundle(next.RootPEM), true},
		{"old leaf, new bundle", leaf(old.CA), bundle(next.RootPEM), false},
		{"after, new bundle", leaf(after), bundle(next.RootPEM), true},
		{"after, old bundle", leaf(after), bundle(oldRoot), false},
	} {
		_, err := certs.VerifySVID(tc.chain, tc.bundle, time.Now())
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
