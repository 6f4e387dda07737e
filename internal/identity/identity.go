package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// MaxNameLen is the longest service name, the length of a DNS label, so that a
// service name can always be used in DNS and SNI.
const MaxNameLen = 63

// ID is a validated Trellis SPIFFE ID. The zero value is not a valid ID; build
// one with New or Parse.
type ID struct {
	trustDomain string
	service     string
}

// New returns the ID of service in trustDomain.
func New(trustDomain, service string) (ID, error) {
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return ID{}, err
	}
	if err := ValidateServiceName(service); err != nil {
		return ID{}, err
	}
	return ID{trustDomain: trustDomain, service: service}, nil
}

// Parse parses "spiffe://<trust-domain>/svc/<service>".
func Parse(s string) (ID, error) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return ID{}, fmt.Errorf("spiffe id %q: scheme must be spiffe", s)
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok {
		return ID{}, fmt.Errorf("spiffe id %q: no path", s)
	}
	svc, ok := strings.CutPrefix(path, "svc/")
	if !ok {
		return ID{}, fmt.Errorf("spiffe id %q: path must be /svc/<service>", s)
	}
	id, err := New(td, svc)
	if err != nil {
		return ID{}, fmt.Errorf("spiffe id %q: %w", s, err)
	}
	return id, nil
}

// FromCertificate returns the ID in cert's single URI SAN. A certificate with
// no URI SAN, more than one, or one that is not a Trellis ID is rejected, as
// the X509-SVID standard requires.
func FromCertificate(cert *x509.Certificate) (ID, error) {
	if len(cert.URIs) != 1 {
		return ID{}, fmt.Errorf("certificate has %d URI SANs, want exactly 1", len(cert.URIs))
	}
	return Parse(cert.URIs[0].String())
}

// IsZero reports whether id is the zero value.
func (id ID) IsZero() bool { return id.service == "" }

// TrustDomain returns the trust domain name.
func (id ID) TrustDomain() string { return id.trustDomain }

// Service returns the service name.
func (id ID) Service() string { return id.service }

// String returns the ID in its URI form.
func (id ID) String() string {
	if id.IsZero() {
		return ""
	}
	return "spiffe://" + id.trustDomain + "/svc/" + id.service
}

// URL returns the ID as a URL, for a certificate's URI SAN.
func (id ID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.trustDomain, Path: "/svc/" + id.service}
}

// ValidateServiceName checks that name is a DNS label: 1 to 63 lowercase
// letters, digits and hyphens, starting with a letter and not ending with a
// hyphen.
func ValidateServiceName(name string) error {
	switch {
	case name == "":
		return errors.New("service name is empty")
	case len(name) > MaxNameLen:
		return fmt.Errorf("service name %q is longer than %d characters", name, MaxNameLen)
	case name[0] < 'a' || name[0] > 'z':
		return fmt.Errorf("service name %q must start with a lowercase letter", name)
	case name[len(name)-1] == '-':
		return fmt.Errorf("service name %q must not end with a hyphen", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("service name %q: %q is not allowed (use a-z, 0-9 and -)", name, c)
		}
	}
	return nil
}

// ValidateTrustDomain checks a trust domain name as the SPIFFE ID standard
// defines it: lowercase letters, digits, dots, hyphens and underscores.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return errors.New("trust domain is empty")
	}
	if len(td) > 255 {
		return fmt.Errorf("trust domain %q is longer than 255 characters", td)
	}
	for _, c := range td {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("trust domain %q: %q is not allowed", td, c)
		}
	}
	return nil
}

// EnvName is a service name as an environment variable suffix:
// hello-backend is HELLO_BACKEND. Apps find an upstream's local listener
// in UPSTREAM_<EnvName>, whether trellis up or trellis inject started them.
func EnvName(service string) string {
	return strings.ToUpper(strings.ReplaceAll(service, "-", "_"))
}
