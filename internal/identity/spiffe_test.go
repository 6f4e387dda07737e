package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"
)

// hostileIDs are SPIFFE ID spellings that Go's URL parser accepts and
// normalizes into a valid-looking ID, or that break one of the SPIFFE-ID
// rules in a way a lenient parser lets through. Every one must be refused.
var hostileIDs = []string{
	"SPIFFE://td/svc/c",                               // the scheme is lowercase only
	"Spiffe://td/svc/c",                               // idem
	"spiffe://td/svc/c#",                              // url.URL.String drops an empty fragment
	"spiffe://td/svc/c#x",                             // fragment
	"spiffe://td/svc/c?",                              // empty query
	"spiffe://td/svc/c?x=1",                           // query
	"spiffe://td:443/svc/c",                           // port
	"spiffe://td:/svc/c",                              // empty port
	"spiffe://u@td/svc/c",                             // userinfo
	"spiffe://@td/svc/c",                              // empty userinfo
	"spiffe://td/svc/%63",                             // percent-encoding in the path
	"spiffe://t%64/svc/c",                             // percent-encoding in the trust domain (Go unescapes it)
	"spiffe://TD/svc/c",                               // uppercase trust domain
	"spiffe://td/svc/c/",                              // trailing slash
	"spiffe://td//svc/c",                              // empty segment
	"spiffe://td/svc/./c",                             // dot segment
	"spiffe://td/svc/../c",                            // dot-dot segment
	"spiffe://td/svc/..",                              // trailing dot-dot segment
	"spiffe://td/",                                    // trust domain with a slash and no path
	"spiffe:///svc/c",                                 // no trust domain
	"spiffe:/td/svc/c",                                // no authority
	"spiffe:td/svc/c",                                 // opaque
	"spiffe://td/svc/c d",                             // space
	"spiffe://td/svc/c\x00",                           // NUL
	"spiffe://td/svc/c\u00e9",                         // non-ASCII
	"spiffe://[::1]/svc/c",                            // IP literal
	"spiffe://td\\svc/c",                              // backslash
	" spiffe://td/svc/c",                              // leading space
	"spiffe://td/svc/c\n",                             // trailing newline
	"spiffe://" + strings.Repeat("a", 256) + "/svc/c", // trust domain over 255 bytes
	"spiffe://td/" + strings.Repeat("a", 2048-len("spiffe://td/")+1), // over 2048 bytes
}

func TestParseSPIFFERejectsHostileSpellings(t *testing.T) {
	for _, s := range hostileIDs {
		t.Run(s, func(t *testing.T) {
			if id, err := ParseSPIFFE(s); err == nil {
				t.Fatalf("ParseSPIFFE(%q) = %q, want error", s, id)
			}
			if id, err := Parse(s); err == nil {
				t.Fatalf("Parse(%q) = %q, want error", s, id)
			}
		})
	}
}

func TestParseSPIFFE(t *testing.T) {
	tests := []struct {
		in, td, path string
	}{
		{in: "spiffe://td", td: "td"},
		{in: "spiffe://trellis.local/trellis/server", td: "trellis.local", path: "/trellis/server"},
		{in: "spiffe://a-b_c.9/A/z.Z/-_.x/...", td: "a-b_c.9", path: "/A/z.Z/-_.x/..."},
		{in: "spiffe://" + strings.Repeat("a", 255), td: strings.Repeat("a", 255)},
		{in: "spiffe://td/" + strings.Repeat("a", 2048-len("spiffe://td/")), td: "td", path: "/" + strings.Repeat("a", 2048-len("spiffe://td/"))},
	}
	for _, tt := range tests {
		t.Run(tt.in[:min(len(tt.in), 60)], func(t *testing.T) {
			id, err := ParseSPIFFE(tt.in)
			if err != nil {
				t.Fatalf("ParseSPIFFE(%q): %v", tt.in, err)
			}
			if id.TrustDomain() != tt.td || id.Path() != tt.path || id.String() != tt.in {
				t.Fatalf("got (%q, %q, %q), want (%q, %q, %q)", id.TrustDomain(), id.Path(), id.String(), tt.td, tt.path, tt.in)
			}
		})
	}
}

func TestParseSPIFFEErrorsSayWhat(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "empty"},
		{"SPIFFE://td/a", "scheme"},
		{"spiffe://td/a#", `'#' at byte 13`},
		{"spiffe://td:1/a", `':' at byte 11`},
		{"spiffe://td/a//b", "empty path segment"},
		{"spiffe://td/a/../b", `".." path segment`},
		{"spiffe://td/a/", "trailing slash"},
		{"spiffe://td/%61", `'%' at byte 12`},
	}
	for _, tt := range tests {
		_, err := ParseSPIFFE(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseSPIFFE(%q) error = %v, want containing %q", tt.in, err, tt.want)
		}
	}
}

// certWithURIs signs a certificate whose subjectAltName extension holds
// the given URI strings byte for byte, as a forger would write them.
func certWithURIs(t testing.TB, uris ...string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "forged"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
	}
	if uris != nil {
		var names []asn1.RawValue
		for _, u := range uris {
			names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(u)})
		}
		val, err := asn1.Marshal(names)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: val}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Skipf("crypto/x509 refuses the certificate itself: %v", err)
	}
	return c
}

func TestFromCertificateReadsRawSAN(t *testing.T) {
	// Each of these survives crypto/x509 (cert.URIs holds a URL whose
	// String() is a valid workload ID) but is not what the SAN says.
	for _, raw := range []string{"spiffe://td/svc/c#", "SPIFFE://td/svc/c", "Spiffe://td/svc/c#", "spiffe://td/svc/c?"} {
		t.Run(raw, func(t *testing.T) {
			c := certWithURIs(t, raw)
			if len(c.URIs) != 1 {
				t.Fatalf("crypto/x509 parsed %d URIs, want 1", len(c.URIs))
			}
			t.Logf("crypto/x509 reads %q as %q", raw, c.URIs[0].String())
			if id, err := FromCertificate(c); err == nil {
				t.Fatalf("FromCertificate(SAN %q) = %s, want error", raw, id)
			}
			if id, err := SPIFFEIDFromCertificate(c); err == nil {
				t.Fatalf("SPIFFEIDFromCertificate(SAN %q) = %s, want error", raw, id)
			}
		})
	}
}

func TestFromCertificate(t *testing.T) {
	one := certWithURIs(t, "spiffe://td/svc/a")
	if id, err := FromCertificate(one); err != nil || id.Service() != "a" || id.TrustDomain() != "td" {
		t.Fatalf("FromCertificate(one) = %v, %v; want service a in td", id, err)
	}
	if _, err := FromCertificate(certWithURIs(t, "spiffe://td/svc/a", "spiffe://td/svc/b")); err == nil {
		t.Fatal("FromCertificate with two URI SANs succeeded, want error")
	}
	if _, err := FromCertificate(certWithURIs(t, "spiffe://td/svc/a", "https://example.com/")); err == nil {
		t.Fatal("FromCertificate with a second, non-SPIFFE URI SAN succeeded, want error")
	}
	if _, err := FromCertificate(certWithURIs(t)); err == nil {
		t.Fatal("FromCertificate with no SAN succeeded, want error")
	}
	general := certWithURIs(t, "spiffe://td/trellis/server")
	if _, err := FromCertificate(general); err == nil {
		t.Fatal("FromCertificate accepted a non-workload path")
	}
	if id, err := SPIFFEIDFromCertificate(general); err != nil || id.Path() != "/trellis/server" {
		t.Fatalf("SPIFFEIDFromCertificate = %v, %v; want path /trellis/server", id, err)
	}
	// A hand-made certificate whose URIs field was filled in without a SAN
	// extension is refused: only the signed bytes count.
	if _, err := FromCertificate(&x509.Certificate{URIs: []*url.URL{{Scheme: "spiffe", Host: "td", Path: "/svc/a"}}}); err == nil {
		t.Fatal("FromCertificate trusted cert.URIs without a SAN extension")
	}
}

func FuzzParseSPIFFE(f *testing.F) {
	for _, s := range hostileIDs {
		f.Add(s)
	}
	for _, s := range []string{"spiffe://td", "spiffe://td/svc/a", "spiffe://td/a/b/c", "spiffe://td/a%2fb", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseSPIFFE(s)
		if err != nil {
			if !id.IsZero() {
				t.Fatalf("ParseSPIFFE(%q) returned %q with error %v", s, id, err)
			}
			return
		}
		if id.String() != s || len(s) > MaxIDLen {
			t.Fatalf("ParseSPIFFE(%q).String() = %q", s, id.String())
		}
		// What is accepted is a fixed point of Go's URL parser, so that
		// reading a certificate's URIs field could never disagree with it.
		u, err := url.Parse(s)
		if err != nil || u.String() != s || u.Scheme != "spiffe" || u.Host != id.TrustDomain() || u.Path != id.Path() || u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.Port() != "" {
			t.Fatalf("url.Parse(%q) = %#v, %v: disagrees with ParseSPIFFE", s, u, err)
		}
		if w, err := Parse(s); err == nil {
			if w.String() != s || "/svc/"+w.Service() != id.Path() {
				t.Fatalf("Parse(%q) = %q, want the same ID", s, w)
			}
		}
	})
}

func FuzzURISANs(f *testing.F) {
	seed := func(uris ...string) []byte {
		var names []asn1.RawValue
		for _, u := range uris {
			names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(u)})
		}
		b, _ := asn1.Marshal(names)
		return b
	}
	f.Add(seed("spiffe://td/svc/a"))
	f.Add(seed("spiffe://td/svc/a", "spiffe://td/svc/b"))
	f.Add(seed())
	f.Add([]byte{0x30, 0x03, 0x86, 0x01, 'a'})
	f.Add([]byte{0x30, 0x80, 0x86, 0x01, 'a', 0, 0})
	f.Add([]byte{0x30, 0x81, 0x03, 0x86, 0x01, 'a'})
	f.Fuzz(func(t *testing.T, der []byte) {
		uris, err := uriSANs(der)
		if err != nil {
			return
		}
		// Whatever was read re-encodes to a SAN holding the same URIs.
		again, err := uriSANs(seed(uris...))
		if err != nil || len(again) != len(uris) {
			t.Fatalf("re-encoded %q: %q, %v", uris, again, err)
		}
		for i := range uris {
			if again[i] != uris[i] {
				t.Fatalf("re-encoded %q: got %q", uris, again)
			}
		}
	})
}
