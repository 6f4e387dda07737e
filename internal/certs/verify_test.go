package certs_test

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// svidCase is one chain presented to VerifySVID: a leaf (and optional
// intermediate) forged under the td root or a foreign one.
type svidCase struct {
	name string
	// leaf changes the forged leaf's spec, which starts as an SVID for
	// spiffe://td/svc/a.
	leaf func(*trellistest.ForgeSpec)
	// inter, if set, puts an intermediate with this spec between the root
	// and the leaf.
	inter   *trellistest.ForgeSpec
	foreign bool      // sign with a root outside the bundle
	at      time.Time // verify at this time; zero means now
	// want is the rejection sentinel; nil means accepted.
	want error
}

func svidCases() []svidCase {
	ekus := func(e ...x509.ExtKeyUsage) func(*trellistest.ForgeSpec) {
		return func(s *trellistest.ForgeSpec) { s.EKU = e }
	}
	uris := func(u ...string) func(*trellistest.ForgeSpec) {
		return func(s *trellistest.ForgeSpec) { s.URIs = u }
	}
	inter := func(u ...string) *trellistest.ForgeSpec { s := trellistest.SigningSpec(u...); return &s }
	return []svidCase{
		{name: "issued shape"},
		{name: "no EKU extension", leaf: ekus()},
		{name: "both EKUs and code signing", leaf: ekus(x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageCodeSigning)},
		{name: "intermediate without ID", inter: inter()},
		{name: "intermediate with the trust domain ID", inter: inter("spiffe://td")},
		{name: "intermediate with a non-SPIFFE URI", inter: inter("https://ca.example/policy")},

		{name: "serverAuth only", leaf: ekus(x509.ExtKeyUsageServerAuth), want: certs.ErrNotSVID},
		{name: "clientAuth only", leaf: ekus(x509.ExtKeyUsageClientAuth), want: certs.ErrNotSVID},
		{name: "codeSigning only", leaf: ekus(x509.ExtKeyUsageCodeSigning), want: certs.ErrNotSVID},
		{name: "any EKU only", leaf: ekus(x509.ExtKeyUsageAny), want: certs.ErrNotSVID},
		{name: "serverAuth and codeSigning", leaf: ekus(x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageCodeSigning), want: certs.ErrNotSVID},
		{name: "no key usage", leaf: func(s *trellistest.ForgeSpec) { s.KeyUsage = 0 }, want: certs.ErrNotSVID},
		{name: "keyEncipherment only", leaf: func(s *trellistest.ForgeSpec) { s.KeyUsage = x509.KeyUsageKeyEncipherment }, want: certs.ErrNotSVID},
		{name: "keyCertSign", leaf: func(s *trellistest.ForgeSpec) { s.KeyUsage |= x509.KeyUsageCertSign }, want: certs.ErrNotSVID},
		{name: "cRLSign", leaf: func(s *trellistest.ForgeSpec) { s.KeyUsage |= x509.KeyUsageCRLSign }, want: certs.ErrNotSVID},
		{name: "leaf is a CA", leaf: func(s *trellistest.ForgeSpec) { s.IsCA = true }, want: certs.ErrNotSVID},
		{name: "empty fragment", leaf: uris("spiffe://td/svc/c#"), want: certs.ErrNotSVID},
		{name: "uppercase scheme", leaf: uris("SPIFFE://td/svc/c"), want: certs.ErrNotSVID},
		{name: "empty query", leaf: uris("spiffe://td/svc/c?"), want: certs.ErrNotSVID},
		{name: "two URI SANs", leaf: uris("spiffe://td/svc/a", "spiffe://td/svc/b"), want: certs.ErrNotSVID},
		{name: "no URI SAN", leaf: uris(), want: certs.ErrNotSVID},
		{name: "not a workload path", leaf: uris("spiffe://td/trellis/server"), want: certs.ErrNotSVID},
		{name: "trust domain ID on a leaf", leaf: uris("spiffe://td"), want: certs.ErrNotSVID},
		{name: "other trust domain", leaf: uris("spiffe://other/svc/a"), want: certs.ErrTrustDomain},
		{name: "intermediate with a path", inter: inter("spiffe://td/svc/x"), want: certs.ErrSigningCert},
		{name: "intermediate of another trust domain", inter: inter("spiffe://other"), want: certs.ErrSigningCert},
		{name: "intermediate with an uppercase scheme", inter: inter("SPIFFE://td"), want: certs.ErrSigningCert},
		{name: "intermediate with two IDs", inter: inter("spiffe://td", "spiffe://td"), want: certs.ErrSigningCert},
		{name: "intermediate without key usage", inter: &trellistest.ForgeSpec{IsCA: true}, want: certs.ErrSigningCert},
		{name: "intermediate not a CA", inter: &trellistest.ForgeSpec{KeyUsage: x509.KeyUsageCertSign}, want: certs.ErrUntrusted},
		{name: "foreign root", foreign: true, want: certs.ErrUntrusted},
		{name: "expired", at: time.Now().Add(2 * time.Hour), want: certs.ErrUntrusted},
		{name: "not yet valid", at: time.Now().Add(-time.Hour), want: certs.ErrUntrusted},
	}
}

func TestVerifySVIDFollowsTheStandard(t *testing.T) {
	root := trellistest.NewCA(t, "td")
	foreign := trellistest.NewCA(t, "td")
	b := root.Bundle(t)
	for _, tc := range svidCases() {
		t.Run(tc.name, func(t *testing.T) {
			issuer := root.Forger(t)
			if tc.foreign {
				issuer = foreign.Forger(t)
			}
			var chain []*trellistest.Forged
			if tc.inter != nil {
				issuer = trellistest.Forge(t, *tc.inter, issuer)
				chain = append(chain, issuer)
			}
			spec := trellistest.SVIDSpec("spiffe://td/svc/a")
			if tc.leaf != nil {
				tc.leaf(&spec)
			}
			leaf := trellistest.Forge(t, spec, issuer)
			at := tc.at
			if at.IsZero() {
				at = time.Now()
			}
			id, err := certs.VerifySVID(leaf.Chain(chain...), b, at)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("VerifySVID: %v, want accepted", err)
				}
				if id.String() != "spiffe://td/svc/a" {
					t.Fatalf("VerifySVID = %s, want spiffe://td/svc/a", id)
				}
				return
			}
			if err == nil {
				t.Fatalf("VerifySVID accepted the chain as %s, want %v", id, tc.want)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("VerifySVID error = %v, want %v", err, tc.want)
			}
		})
	}
}

// The CA's own issuance passes the strict verifier, with the CA's root
// (which carries spiffe://td) and through an imported intermediate.
func TestVerifySVIDAcceptsWhatTheCAIssues(t *testing.T) {
	root := trellistest.NewCA(t, "td")
	cert := root.SVID(t, "a", 0)
	if _, err := certs.VerifySVID([]*x509.Certificate{cert.Leaf}, root.Bundle(t), time.Now()); err != nil {
		t.Fatalf("CA-issued SVID: %v", err)
	}
	if !strings.HasPrefix(root.Certificate().URIs[0].String(), "spiffe://td") {
		t.Fatalf("root URIs = %v", root.Certificate().URIs)
	}
}
