package identity

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// MaxIDLen is the longest SPIFFE ID accepted, in bytes: the length the
// SPIFFE X509-SVID standard asks every implementation to support. A peer
// cannot make a verifier read more than this.
const MaxIDLen = 2048

// MaxTrustDomainLen is the longest trust domain name, in bytes, as the
// SPIFFE ID standard caps it.
const MaxTrustDomainLen = 255

const scheme = "spiffe://"

// SPIFFEID is any valid SPIFFE ID: a trust domain and a path that may be
// empty (the trust domain's own ID, as a CA carries) or of any segments
// (spiffe://<td>/trellis/server). Workloads use the narrower ID. The zero
// value is not a valid ID; build one with ParseSPIFFE.
type SPIFFEID struct {
	trustDomain string
	path        string // "" or "/seg/seg..."
}

// ParseSPIFFE parses s by the SPIFFE ID standard, byte for byte and
// without any URL normalization: the scheme is exactly "spiffe://" in
// lowercase; the trust domain is 1 to 255 bytes of a-z, 0-9, '.', '-' and
// '_'; the path is empty or segments of a-z, A-Z, 0-9, '.', '-' and '_',
// none empty, "." or "..", with no trailing slash. A port, userinfo,
// query, fragment or percent-encoding is refused (none of their characters
// is allowed), and so is anything longer than MaxIDLen bytes.
func ParseSPIFFE(s string) (SPIFFEID, error) {
	if s == "" {
		return SPIFFEID{}, errors.New("spiffe id is empty")
	}
	if len(s) > MaxIDLen {
		return SPIFFEID{}, fmt.Errorf("spiffe id %.40q...: %d bytes is longer than %d", s, len(s), MaxIDLen)
	}
	rest, ok := strings.CutPrefix(s, scheme)
	if !ok {
		return SPIFFEID{}, fmt.Errorf("spiffe id %q: scheme must be %q, in lowercase", s, scheme)
	}
	td, path := rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		td, path = rest[:i], rest[i:]
	}
	if td == "" {
		return SPIFFEID{}, fmt.Errorf("spiffe id %q: trust domain is empty", s)
	}
	for i := 0; i < len(td); i++ {
		if !isTrustDomainChar(td[i]) {
			return SPIFFEID{}, fmt.Errorf("spiffe id %q: %s at byte %d is not allowed in a trust domain (use a-z, 0-9, '.', '-', '_')", s, quoteByte(td[i]), len(scheme)+i)
		}
	}
	if len(td) > MaxTrustDomainLen {
		return SPIFFEID{}, fmt.Errorf("spiffe id %.40q...: trust domain of %d bytes is longer than %d", s, len(td), MaxTrustDomainLen)
	}
	if err := validatePath(path, len(scheme)+len(td)); err != nil {
		return SPIFFEID{}, fmt.Errorf("spiffe id %q: %w", s, err)
	}
	return SPIFFEID{trustDomain: td, path: path}, nil
}

// validatePath checks a SPIFFE ID path; at is the offset of path in the
// ID, for error messages.
func validatePath(path string, at int) error {
	if path == "" {
		return nil
	}
	start := 0 // index of the '/' that opens the current segment
	for i := 1; i <= len(path); i++ {
		if i < len(path) && path[i] != '/' {
			if !isPathChar(path[i]) {
				return fmt.Errorf("%s at byte %d is not allowed in a path (use a-z, A-Z, 0-9, '.', '-', '_')", quoteByte(path[i]), at+i)
			}
			continue
		}
		switch seg := path[start+1 : i]; {
		case seg == "" && i == len(path):
			return fmt.Errorf("trailing slash at byte %d", at+start)
		case seg == "":
			return fmt.Errorf("empty path segment at byte %d", at+start)
		case seg == "." || seg == "..":
			return fmt.Errorf("%q path segment at byte %d", seg, at+start+1)
		}
		start = i
	}
	return nil
}

func isTrustDomainChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_'
}

func isPathChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_'
}

// quoteByte names a byte readably in an error: '#', '\x00', 0xc3.
func quoteByte(c byte) string {
	if c < 0x80 {
		return fmt.Sprintf("%q", rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

// IsZero reports whether id is the zero value.
func (id SPIFFEID) IsZero() bool { return id.trustDomain == "" }

// TrustDomain returns the trust domain name.
func (id SPIFFEID) TrustDomain() string { return id.trustDomain }

// Path returns the path: "" for a trust domain's own ID, else "/" and
// the segments.
func (id SPIFFEID) Path() string { return id.path }

// String returns the ID as it was parsed.
func (id SPIFFEID) String() string {
	if id.IsZero() {
		return ""
	}
	return scheme + id.trustDomain + id.path
}

// URL returns the ID as a URL, for a certificate's URI SAN.
func (id SPIFFEID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.trustDomain, Path: id.path}
}

// Workload returns id as a workload ID if its path is /svc/<service>.
func (id SPIFFEID) Workload() (ID, error) {
	if id.IsZero() {
		return ID{}, errors.New("spiffe id is empty")
	}
	svc, ok := strings.CutPrefix(id.path, "/svc/")
	if !ok {
		if id.path == "" {
			return ID{}, fmt.Errorf("spiffe id %q: no path, want /svc/<service>", id)
		}
		return ID{}, fmt.Errorf("spiffe id %q: path must be /svc/<service>", id)
	}
	if err := ValidateServiceName(svc); err != nil {
		return ID{}, fmt.Errorf("spiffe id %q: %w", id, err)
	}
	return ID{trustDomain: id.trustDomain, service: svc}, nil
}
