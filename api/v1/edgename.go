package v1

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ValidateEdgeName checks a name the mesh CA may put in an edge certificate
// (a Service's spec.dnsNames, a Gateway listener's names with source mesh).
// The mesh CA's roots are trusted by every workload and by the CLI, so a
// name it signs must not stand for anything but the service: not loopback
// (a service holding "localhost" could pose as any local server), not an
// address, and not a wildcard so wide that it covers other people's
// domains. The rules follow what public CAs must refuse (CA/Browser Forum
// Baseline Requirements 3.2.2.6): one wildcard label at most, leftmost and
// whole, never directly under a top-level domain. (The server also refuses
// a wildcard directly under any public suffix, such as *.co.uk, from the
// Public Suffix List, which this package leaves out to stay a leaf.)
func ValidateEdgeName(name string) error {
	labels, wildcard, err := checkDNSName(name, true, "; edge certificates carry DNS names only")
	if err != nil {
		return err
	}
	if wildcard && len(labels) < 2 {
		return fmt.Errorf("%q: a wildcard over a top-level domain would cover every domain in it", name)
	}
	return nil
}

// checkDNSName applies the rules every DNS name of the mesh follows (an
// edge certificate's, a mesh domain, a hostname): 1 to 253 characters
// without a trailing dot, letter-digit-hyphen labels, no address, no
// numeric last label, no loopback name. A leading "*." is cut off when
// wildcardOK (wildcard says so) and refused otherwise; labels are those
// of the rest, lowercase. notIP ends the message for an IP address.
func checkDNSName(name string, wildcardOK bool, notIP string) (labels []string, wildcard bool, err error) {
	n := strings.ToLower(name)
	switch {
	case n == "":
		return nil, false, errors.New("empty name")
	case len(n) > 253:
		return nil, false, fmt.Errorf("%q is longer than 253 characters", name)
	case strings.HasSuffix(n, "."):
		return nil, false, fmt.Errorf("%q ends with a dot; write the name without it", name)
	case !wildcardOK && strings.Contains(n, "*"):
		return nil, false, fmt.Errorf("%q: a mesh name is never a wildcard", name)
	}
	if _, err := netip.ParseAddr(n); err == nil {
		return nil, false, fmt.Errorf("%q is an IP address%s", name, notIP)
	}
	base, wildcard := strings.CutPrefix(n, "*.")
	labels = strings.Split(base, ".")
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return nil, false, fmt.Errorf("%q: %w", name, err)
		}
	}
	if numericLabel(labels[len(labels)-1]) {
		// No top-level domain is a number: a name that ends in one is an
		// address to inet_aton (so to curl and most resolvers: "127.1",
		// "0x7f000001", "1.0x1") and to browsers (the WHATWG URL parser
		// reads such a host as IPv4).
		return nil, false, fmt.Errorf("%q ends in a numeric label, as an IP address does", name)
	}
	if loopbackNames[base] || strings.HasSuffix(base, ".localhost") {
		return nil, false, fmt.Errorf("%q is a loopback name (RFC 6761, or the hosts file of common systems)", name)
	}
	return labels, wildcard, nil
}

func checkLabel(l string) error {
	switch {
	case l == "":
		return errors.New("empty label")
	case l == "*":
		return errors.New("a wildcard may only be the whole leftmost label, once")
	case len(l) > 63:
		return fmt.Errorf("label %q is longer than 63 characters", l)
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Errorf("label %q starts or ends with a hyphen", l)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("label %q: %q is not a letter, digit or hyphen", l, c)
		}
	}
	return nil
}

// loopbackNames are names that mean this host: RFC 6761's localhost and
// what the hosts files of Debian, Ubuntu and Red Hat map to loopback.
var loopbackNames = map[string]bool{
	"localhost": true, "localhost.localdomain": true, "localhost4": true, "localhost4.localdomain4": true,
	"localhost6": true, "localhost6.localdomain6": true, "ip6-localhost": true, "ip6-loopback": true,
}

// numericLabel reports whether l is a number as inet_aton and the WHATWG
// URL parser read one: decimal digits (octal with a leading 0), or 0x and
// hex digits.
func numericLabel(l string) bool {
	if rest, ok := strings.CutPrefix(l, "0x"); ok {
		return strings.Trim(rest, "0123456789abcdef") == ""
	}
	return l != "" && strings.Trim(l, "0123456789") == ""
}
