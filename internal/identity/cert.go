package identity

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"
)

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// tagURI is the context-specific tag of uniformResourceIdentifier in a
// GeneralName (RFC 5280, 4.2.1.6).
const tagURI = 6

// URISANs returns the URI SANs of cert as the signed bytes spell them.
// cert.URIs is not used: crypto/x509 fills it through url.Parse, whose
// String() lowercases the scheme and drops an empty fragment, so
// "SPIFFE://td/svc/a#" would read back as a valid ID.
func URISANs(cert *x509.Certificate) ([]string, error) {
	var ext []byte
	found := false
	for _, e := range cert.Extensions {
		if !e.Id.Equal(oidSubjectAltName) {
			continue
		}
		if found {
			return nil, errors.New("certificate has two subjectAltName extensions")
		}
		ext, found = e.Value, true
	}
	if !found {
		return nil, nil
	}
	return uriSANs(ext)
}

// uriSANs reads the URIs of a DER subjectAltName extension value, a
// SEQUENCE of GeneralName, skipping names of other kinds.
func uriSANs(der []byte) ([]string, error) {
	var seq asn1.RawValue
	rest, err := asn1.Unmarshal(der, &seq)
	if err != nil {
		return nil, fmt.Errorf("subjectAltName: %w", err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("subjectAltName: %d bytes after the sequence", len(rest))
	}
	if seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
		return nil, errors.New("subjectAltName: not a SEQUENCE")
	}
	var uris []string
	for in := seq.Bytes; len(in) > 0; {
		var name asn1.RawValue
		if in, err = asn1.Unmarshal(in, &name); err != nil {
			return nil, fmt.Errorf("subjectAltName name %d: %w", len(uris)+1, err)
		}
		if name.Class != asn1.ClassContextSpecific || name.Tag != tagURI {
			continue
		}
		if name.IsCompound {
			return nil, errors.New("subjectAltName: URI is not a primitive IA5String")
		}
		uris = append(uris, string(name.Bytes))
	}
	return uris, nil
}

// SPIFFEIDFromCertificate returns the SPIFFE ID in cert's single URI SAN,
// read from the signed bytes and parsed by ParseSPIFFE. A certificate with
// no URI SAN or more than one is refused, as the X509-SVID standard
// requires of an SVID.
func SPIFFEIDFromCertificate(cert *x509.Certificate) (SPIFFEID, error) {
	uris, err := URISANs(cert)
	if err != nil {
		return SPIFFEID{}, err
	}
	if len(uris) != 1 {
		return SPIFFEID{}, fmt.Errorf("certificate has %d URI SANs, want exactly 1", len(uris))
	}
	return ParseSPIFFE(uris[0])
}

// FromCertificate returns the workload ID in cert's single URI SAN, with
// the rules of SPIFFEIDFromCertificate and a path of /svc/<service>. It
// checks only the name: certs.VerifySVID checks a peer's whole chain.
func FromCertificate(cert *x509.Certificate) (ID, error) {
	id, err := SPIFFEIDFromCertificate(cert)
	if err != nil {
		return ID{}, err
	}
	return id.Workload()
}

// CheckSigningCertificate checks the SPIFFE IDs of a signing certificate
// (a CA in an SVID's chain) by the X509-SVID standard: it may carry none,
// or one, the ID of trust domain td itself, with no path. Any URI SAN
// whose scheme is spiffe in any case counts as an ID, so that a spelling
// a lenient reader would accept is judged too; other URIs are ignored.
func CheckSigningCertificate(cert *x509.Certificate, td string) error {
	uris, err := URISANs(cert)
	if err != nil {
		return err
	}
	n := 0
	for _, u := range uris {
		if len(u) < len("spiffe:") || !strings.EqualFold(u[:len("spiffe:")], "spiffe:") {
			continue
		}
		n++
		id, err := ParseSPIFFE(u)
		switch {
		case err != nil:
			return err
		case id.Path() != "":
			return fmt.Errorf("carries %s: a signing certificate's SPIFFE ID has no path", id)
		case id.TrustDomain() != td:
			return fmt.Errorf("carries %s, not trust domain %q", id, td)
		}
	}
	if n > 1 {
		return fmt.Errorf("carries %d SPIFFE IDs, want at most 1", n)
	}
	return nil
}
