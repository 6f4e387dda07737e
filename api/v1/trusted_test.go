package v1

import (
	"net/netip"
	"strings"
	"testing"
)

// trustedProxies takes CIDRs and single addresses, and refuses what would
// trust more than was meant: every client (/0), a network written with
// host bits, an address with a zone, or not an address at all; each
// refusal names the field.
func TestGatewayTrustedProxies(t *testing.T) {
	gw := func(protocol string, trusted ...string) *Resource {
		l := GatewayListener{Port: 8000, Protocol: protocol, TrustedProxies: trusted}
		if protocol == GatewayTLSPassthrough {
			l.DefaultService = "web"
		} else {
			l.Routes = []GatewayRoute{{PathPrefix: "/", Service: "web"}}
		}
		return &Resource{Kind: KindGateway, Name: "edge", Gateway: &GatewaySpec{Listeners: []GatewayListener{l}}}
	}
	if err := gw(GatewayHTTP, "10.0.0.0/8", "192.0.2.1", "2001:db8::/32", "::1").Validate(); err != nil {
		t.Fatalf("valid trustedProxies refused: %v", err)
	}
	for _, bad := range []string{"0.0.0.0/0", "::/0", "10.0.0.1/8", "10.0.0.0/33", "fe80::1%eth0", "lb.example", "", "::ffff:10.0.0.0/104"} {
		err := gw(GatewayHTTP, "10.0.0.0/8", bad).Validate()
		if err == nil {
			t.Errorf("trustedProxies %q accepted", bad)
			continue
		}
		if !strings.Contains(err.Error(), "spec.listeners[0].trustedProxies[1]") {
			t.Errorf("trustedProxies %q: %v does not name the field", bad, err)
		}
	}
	if err := gw(GatewayTLSPassthrough, "10.0.0.0/8").Validate(); err == nil || !strings.Contains(err.Error(), "trustedProxies") {
		t.Errorf("trustedProxies on a tls-passthrough listener: %v", err)
	}
	l := GatewayListener{TrustedProxies: []string{"192.0.2.1", "10.0.0.0/8"}}
	got := l.TrustedPrefixes()
	if len(got) != 2 || got[0] != netip.MustParsePrefix("192.0.2.1/32") || got[1] != netip.MustParsePrefix("10.0.0.0/8") {
		t.Errorf("TrustedPrefixes: %v", got)
	}
}

func FuzzParseTrustedProxy(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "192.0.2.1", "::1", "2001:db8::/32", "0.0.0.0/0", "10.0.0.1/8", "fe80::1%eth0", "::ffff:1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseTrustedProxy(s)
		if err != nil {
			return
		}
		if p.Bits() == 0 || p.Masked() != p || p.Addr().Zone() != "" {
			t.Fatalf("%q accepted as %v", s, p)
		}
		again, err := ParseTrustedProxy(p.String())
		if err != nil || again != p {
			t.Fatalf("%q: %v does not parse back (%v, %v)", s, p, again, err)
		}
	})
}
