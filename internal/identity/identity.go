package identity

import (
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

// Parse parses a workload ID, "spiffe://<trust-domain>/svc/<service>",
// with the rules of ParseSPIFFE.
func Parse(s string) (ID, error) {
	id, err := ParseSPIFFE(s)
	if err != nil {
		return ID{}, err
	}
	return id.Workload()
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
func (id ID) URL() *url.URL { return id.SPIFFE().URL() }

// SPIFFE returns id as a general SPIFFE ID.
func (id ID) SPIFFE() SPIFFEID {
	if id.IsZero() {
		return SPIFFEID{}
	}
	return SPIFFEID{trustDomain: id.trustDomain, path: "/svc/" + id.service}
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
	if len(td) > MaxTrustDomainLen {
		return fmt.Errorf("trust domain %q is longer than %d characters", td, MaxTrustDomainLen)
	}
	for i := 0; i < len(td); i++ {
		if !isTrustDomainChar(td[i]) {
			return fmt.Errorf("trust domain %q: %s is not allowed", td, quoteByte(td[i]))
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
