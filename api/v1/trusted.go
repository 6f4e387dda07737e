package v1

import (
	"fmt"
	"net/netip"
	"strings"
)

// TrustedPrefixes returns TrustedProxies parsed, a single address as a
// prefix of its length; entries that do not parse (Validate reports
// them) are left out.
func (l *GatewayListener) TrustedPrefixes() []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range l.TrustedProxies {
		if p, err := ParseTrustedProxy(s); err == nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// ParseTrustedProxy parses an entry of TrustedProxies: a CIDR with no
// host bits set (10.0.0.0/8) or one address (192.0.2.1). A prefix of
// length 0 is refused: it would trust every client.
func ParseTrustedProxy(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8", s)
		}
		if p.Masked() != p {
			return netip.Prefix{}, fmt.Errorf("%q has host bits set; the network is %s", s, p.Masked())
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or a CIDR such as 10.0.0.0/8", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Bits() == 0 {
		return netip.Prefix{}, fmt.Errorf("%q trusts every client; name the networks of the hops in front of the listener", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q is an IPv4-mapped IPv6 prefix; write the IPv4 form", s)
	}
	return p, nil
}
