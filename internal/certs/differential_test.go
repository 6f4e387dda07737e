package certs_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// The differential tests hold Trellis's verifier against go-spiffe's, the
// SPIFFE project's own. Both must accept and reject the same chains and
// IDs, except where Trellis is deliberately stricter; each such place is
// listed below as a predicate on the input (written from the standard, not
// from Trellis's code), and a disagreement no predicate explains fails the
// test. A listed difference must also really make Trellis refuse, so the
// list cannot hide a hole.

// idDifferences are the SPIFFE ID spellings Trellis refuses and
// spiffeid.FromString accepts.
var idDifferences = []struct {
	name string
	// applies reports whether the difference explains refusing s.
	applies func(s string) bool
}{
	// The X509-SVID standard asks for at least 2048 bytes and Trellis
	// reads no more; go-spiffe has no limit.
	{"longer than 2048 bytes", func(s string) bool { return len(s) > identity.MaxIDLen }},
	// The SPIFFE ID standard caps a trust domain at 255 bytes; go-spiffe
	// does not.
	{"trust domain longer than 255 bytes", func(s string) bool {
		td, _, _ := strings.Cut(strings.TrimPrefix(s, "spiffe://"), "/")
		return len(td) > identity.MaxTrustDomainLen
	}},
}

// explainID returns the listed differences that apply to s.
func explainID(s string) []string {
	var out []string
	for _, d := range idDifferences {
		if d.applies(s) {
			out = append(out, d.name)
		}
	}
	return out
}

func FuzzParseSPIFFEDifferential(f *testing.F) {
	for _, s := range []string{
		"spiffe://td", "spiffe://td/svc/a", "spiffe://td/svc/c#", "SPIFFE://td/a", "spiffe://td/a?",
		"spiffe://td:1/a", "spiffe://u@td/a", "spiffe://td/%61", "spiffe://td/a/", "spiffe://td//a",
		"spiffe://td/./a", "spiffe://td/a/..", "spiffe://TD/a", "spiffe://td/A-Z_.9", "spiffe:///a", "",
		"spiffe://" + strings.Repeat("a", 256), "spiffe://td/" + strings.Repeat("a", 2048),
		"spiffe://td/a~b", "spiffe://td/a!b", "spiffe://t~d/a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ours, ourErr := identity.ParseSPIFFE(s)
		theirs, theirErr := spiffeid.FromString(s)
		why := explainID(s)
		switch {
		case ourErr == nil && theirErr == nil:
			if ours.String() != theirs.String() || ours.TrustDomain() != theirs.TrustDomain().Name() || ours.Path() != theirs.Path() {
				t.Fatalf("%q: Trellis reads (%q, %q), go-spiffe (%q, %q)", s, ours.TrustDomain(), ours.Path(), theirs.TrustDomain().Name(), theirs.Path())
			}
			if len(why) > 0 {
				t.Fatalf("%q: accepted although listed differences %v apply", s, why)
			}
		case ourErr == nil:
			t.Fatalf("%q: Trellis accepts, go-spiffe refuses: %v", s, theirErr)
		case theirErr == nil && len(why) == 0:
			t.Fatalf("%q: Trellis refuses (%v), go-spiffe accepts, and no listed difference explains it", s, ourErr)
		}
	})
}

// differential is the material the chain fuzzer builds chains from: a
// bundle for trust domain td with three roots, one outside it, and a few
// keys so that each chain costs signatures, not key generation.
type differential struct {
	rootTD, rootPath, rootOther, foreign *trellistest.Forged
	bundle                               *certs.Bundle
	theirs                               *x509bundle.Bundle
	keys                                 []*ecdsa.PrivateKey
}

func newDifferential(t testing.TB) *differential {
	td := trellistest.NewCA(t, "td")
	d := &differential{
		rootTD: td.Forger(t),
		// In the bundle, but carrying IDs a signing certificate may not.
		rootPath:  trellistest.Forge(t, trellistest.SigningSpec("spiffe://td/root"), nil),
		rootOther: trellistest.Forge(t, trellistest.SigningSpec("spiffe://other"), nil),
		// Not in the bundle.
		foreign: trellistest.NewCA(t, "td").Forger(t),
	}
	var pemBytes []byte
	roots := []*x509.Certificate{d.rootTD.Cert, d.rootPath.Cert, d.rootOther.Cert}
	for _, r := range roots {
		pemBytes = append(pemBytes, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	b, err := certs.NewBundle("td", pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	d.bundle = b
	d.theirs = x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("td"), roots)
	for range 4 {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		d.keys = append(d.keys, k)
	}
	return d
}

// fuzzBytes hands out choices from the fuzzer's input; past its end every
// choice is 0, the honest one.
type fuzzBytes []byte

func (b *fuzzBytes) next() byte {
	if len(*b) == 0 {
		return 0
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return c
}

// pick returns an element of list, or, for the one choice past its end,
// a string taken from the input.
func (b *fuzzBytes) pick(list []string) string {
	i := int(b.next()) % (len(list) + 1)
	if i < len(list) {
		return list[i]
	}
	n := int(b.next())
	if n > len(*b) {
		n = len(*b)
	}
	s := string((*b)[:n])
	*b = (*b)[n:]
	return s
}

var (
	leafURIs = []string{
		"spiffe://td/svc/a", "spiffe://td/svc/c#", "SPIFFE://td/svc/a", "spiffe://td/svc/a?",
		"spiffe://td", "spiffe://td/trellis/server", "spiffe://other/svc/a", "spiffe://td/svc/a/",
		"spiffe://td//a", "spiffe://td/%61", "spiffe://u@td/svc/a", "spiffe://td:1/svc/a",
		"spiffe://td/a/./b", "spiffe://td/svc/a#frag", "https://td/svc/a", "Spiffe://td/svc/a#",
		"spiffe://" + strings.Repeat("t", 256) + "/a", "spiffe://td/" + strings.Repeat("a", 2048),
	}
	signingURIs = []string{"", "spiffe://td", "spiffe://td/ca", "spiffe://other", "SPIFFE://td", "https://ca.example", "spiffe://td#"}
	leafEKUs    = [][]x509.ExtKeyUsage{
		{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, nil,
		{x509.ExtKeyUsageServerAuth}, {x509.ExtKeyUsageClientAuth}, {x509.ExtKeyUsageCodeSigning},
		{x509.ExtKeyUsageAny}, {x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageCodeSigning},
	}
	signingUsages = []x509.KeyUsage{x509.KeyUsageCertSign | x509.KeyUsageCRLSign, 0, x509.KeyUsageDigitalSignature, x509.KeyUsageCertSign}
)

// chain builds a chain and a verification time from the fuzzer's input.
// It returns nil when crypto/x509 cannot make or read a certificate, as
// crypto/tls could not either.
func (d *differential) chain(in []byte) ([]*x509.Certificate, time.Time) {
	b := fuzzBytes(in)
	issuer := []*trellistest.Forged{d.rootTD, d.foreign, d.rootPath, d.rootOther}[b.next()%4]
	at := time.Now().Add([]time.Duration{0, 2 * time.Hour, -2 * time.Hour}[b.next()%3])
	leaf := trellistest.ForgeSpec{
		EKU:      leafEKUs[int(b.next())%len(leafEKUs)],
		KeyUsage: x509.KeyUsage(b.next()^1) & 0x7f, // 0 gives the honest digitalSignature
		Key:      d.keys[0],
	}
	flags := b.next()
	leaf.IsCA = flags&1 != 0
	for range []int{1, 0, 2, 1}[flags>>1&3] {
		leaf.URIs = append(leaf.URIs, b.pick(leafURIs))
	}
	var inters []*trellistest.Forged
	for i := range int(b.next() % 3) {
		spec := trellistest.ForgeSpec{
			KeyUsage: signingUsages[int(b.next())%len(signingUsages)],
			IsCA:     b.next()%4 != 3,
			Key:      d.keys[1+i],
		}
		if u := b.pick(signingURIs); u != "" {
			spec.URIs = []string{u}
			if b.next()%5 == 4 {
				spec.URIs = append(spec.URIs, u)
			}
		}
		f, err := trellistest.ForgeErr(spec, issuer)
		if err != nil {
			return nil, at
		}
		issuer = f
		inters = append([]*trellistest.Forged{f}, inters...)
	}
	l, err := trellistest.ForgeErr(leaf, issuer)
	if err != nil {
		return nil, at
	}
	return l.Chain(inters...), at
}

var oidEKU = asn1.ObjectIdentifier{2, 5, 29, 37}

// chainDifferences are the chains Trellis refuses and go-spiffe's
// x509svid.Verify accepts. theirs is what go-spiffe read; verified its
// verified chains.
var chainDifferences = []struct {
	name    string
	applies func(chain []*x509.Certificate, theirs spiffeid.ID, verified [][]*x509.Certificate) bool
}{
	// X509-SVID 4.4: a leaf's extended key usage, when present, has both
	// serverAuth and clientAuth. go-spiffe does not look at it.
	{"leaf EKU lacks serverAuth or clientAuth", func(c []*x509.Certificate, _ spiffeid.ID, _ [][]*x509.Certificate) bool {
		leaf := c[0]
		present := false
		for _, e := range leaf.Extensions {
			present = present || e.Id.Equal(oidEKU)
		}
		var s, cl bool
		for _, u := range leaf.ExtKeyUsage {
			s = s || u == x509.ExtKeyUsageServerAuth
			cl = cl || u == x509.ExtKeyUsageClientAuth
		}
		return present && !(s && cl)
	}},
	// X509-SVID 4.3: a leaf sets digitalSignature. go-spiffe checks only
	// that keyCertSign and cRLSign are absent.
	{"leaf lacks digitalSignature", func(c []*x509.Certificate, _ spiffeid.ID, _ [][]*x509.Certificate) bool {
		return c[0].KeyUsage&x509.KeyUsageDigitalSignature == 0
	}},
	// go-spiffe reads the ID through url.URL.String, which lowercases the
	// scheme and drops an empty fragment: the ID it accepts is not the
	// one the certificate carries. Trellis reads the signed bytes.
	{"URI SAN is not what url.URL.String gives back", func(c []*x509.Certificate, _ spiffeid.ID, _ [][]*x509.Certificate) bool {
		raw, err := identity.URISANs(c[0])
		return err == nil && len(raw) == 1 && len(c[0].URIs) == 1 && raw[0] != c[0].URIs[0].String()
	}},
	// The ID length limits of FuzzParseSPIFFEDifferential.
	{"ID over a length limit", func(_ []*x509.Certificate, id spiffeid.ID, _ [][]*x509.Certificate) bool {
		return len(explainID(id.String())) > 0
	}},
	// X509-SVID 3: a leaf's ID has a path; spiffe://td names the trust
	// domain, not a workload. go-spiffe does not check.
	{"leaf ID without a path", func(_ []*x509.Certificate, id spiffeid.ID, _ [][]*x509.Certificate) bool {
		return id.Path() == ""
	}},
	// X509-SVID 3 and 4.3: signing certificates carry no SPIFFE ID with a
	// path (Trellis: none but spiffe://td) and intermediates set
	// keyCertSign. go-spiffe checks neither; Go's verifier checks only
	// that intermediates are CAs. Trellis refuses when every chain the
	// leaf verifies through breaks this.
	{"every verified chain has a signing certificate the standard forbids", func(_ []*x509.Certificate, _ spiffeid.ID, verified [][]*x509.Certificate) bool {
		for _, vc := range verified {
			bad := false
			for i, c := range vc[1:] {
				isRoot := i == len(vc)-2
				bad = bad || (!isRoot && c.KeyUsage&x509.KeyUsageCertSign == 0) || !signingIDOK(c)
			}
			if !bad {
				return false
			}
		}
		return len(verified) > 0
	}},
}

// signingIDOK reports whether a signing certificate's URI SANs hold no
// SPIFFE ID but spiffe://td, at most once.
func signingIDOK(c *x509.Certificate) bool {
	raw, err := identity.URISANs(c)
	if err != nil {
		return false
	}
	n := 0
	for _, u := range raw {
		if strings.HasPrefix(strings.ToLower(u), "spiffe:") {
			n++
			if u != "spiffe://td" {
				return false
			}
		}
	}
	return n <= 1
}

func FuzzVerifyDifferential(f *testing.F) {
	// Seeds: root, time, EKU, key usage^1, flags, URI choices...,
	// intermediates, then per intermediate: usage, CA, URI, doubled.
	for _, seed := range [][]byte{
		{},                                // honest SVID from the td root
		{0, 0, 2},                         // serverAuth only
		{0, 0, 3},                         // clientAuth only
		{0, 0, 4},                         // codeSigning only
		{0, 0, 5},                         // any only
		{0, 0, 1},                         // no EKU
		{0, 0, 0, 1},                      // no key usage
		{0, 0, 0, 0x21},                   // keyCertSign
		{0, 0, 0, 0, 1},                   // leaf is a CA
		{0, 0, 0, 0, 0, 1},                // empty fragment
		{0, 0, 0, 0, 0, 2},                // uppercase scheme
		{0, 0, 0, 0, 0, 4},                // spiffe://td on the leaf
		{0, 0, 0, 0, 0, 15},               // Spiffe:// and an empty fragment
		{0, 0, 0, 0, 4, 0, 0},             // two URI SANs
		{0, 0, 0, 0, 0, 0, 1, 0, 0, 2},    // intermediate with a path
		{0, 0, 0, 0, 0, 0, 1, 0, 0, 3},    // intermediate of another trust domain
		{0, 0, 0, 0, 0, 0, 1, 0, 0, 4},    // intermediate with SPIFFE://td
		{0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 4}, // intermediate with spiffe://td twice
		{0, 0, 0, 0, 0, 0, 1, 1, 0, 1},    // intermediate without key usage
		{0, 0, 0, 0, 0, 0, 1, 0, 3, 1},    // intermediate not a CA
		{0, 0, 0, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0, 2}, // two intermediates, the lower with a path
		{1},                                   // foreign root
		{2},                                   // root with a path
		{3},                                   // root of another trust domain
		{0, 1},                                // expired
		{0, 2},                                // not yet valid
		{0, 0, 0, 0, 0, 16},                   // trust domain over 255 bytes
		{0, 0, 0, 0, 0, 17},                   // ID over 2048 bytes
		{0, 0, 0, 0, 0, 18, 3, 'a', 'b', 'c'}, // a URI from the input
	} {
		f.Add(seed)
	}
	d := newDifferential(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		chain, at := d.chain(in)
		if chain == nil {
			return
		}
		ours, ourErr := certs.VerifySPIFFE(chain, d.bundle, at)
		theirs, verified, theirErr := x509svid.Verify(chain, d.theirs, x509svid.WithTime(at))
		var why []string
		if theirErr == nil {
			for _, diff := range chainDifferences {
				if diff.applies(chain, theirs, verified) {
					why = append(why, diff.name)
				}
			}
		}
		switch {
		case ourErr == nil && theirErr == nil:
			if ours.String() != theirs.String() {
				t.Fatalf("Trellis reads %s, go-spiffe %s", ours, theirs)
			}
			if len(why) > 0 {
				t.Fatalf("Trellis accepts %s although listed differences %v apply", ours, why)
			}
		case ourErr == nil:
			t.Fatalf("Trellis accepts %s, go-spiffe refuses: %v", ours, theirErr)
		case theirErr == nil && len(why) == 0:
			t.Fatalf("Trellis refuses (%v), go-spiffe accepts %s, and no listed difference explains it", ourErr, theirs)
		}
	})
}
