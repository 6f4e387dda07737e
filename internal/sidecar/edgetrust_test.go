package sidecar

import (
	"net/netip"
	"strings"
	"testing"
)

// An edge's trusted proxies are checked as a Gateway listener's, and
// refused where the edge reads no HTTP fields.
func TestEdgeTrustedProxies(t *testing.T) {
	ok := Edge{Listen: "127.0.0.1:8443", DNSNames: []string{"shop.example"}, TrustedProxies: []string{"10.0.0.0/8", "192.0.2.1"}}
	if err := ok.validate(); err != nil {
		t.Fatalf("valid edge refused: %v", err)
	}
	if got := ok.trustedPrefixes(); len(got) != 2 || got[1] != netip.MustParsePrefix("192.0.2.1/32") {
		t.Errorf("trustedPrefixes: %v", got)
	}
	for _, c := range []struct {
		edge Edge
		want string
	}{
		{Edge{Listen: "127.0.0.1:8443", DNSNames: []string{"a"}, TrustedProxies: []string{"0.0.0.0/0"}}, "edge trusted proxy 1"},
		{Edge{Listen: "127.0.0.1:8443", DNSNames: []string{"a"}, TrustedProxies: []string{"10.0.0.0/8", "lb"}}, "edge trusted proxy 2"},
		{Edge{Listen: "127.0.0.1:8443", Mode: EdgePassthrough, TrustedProxies: []string{"10.0.0.0/8"}}, "passthrough"},
		{Edge{Listen: "127.0.0.1:8443", DNSNames: []string{"a"}, SendProxyProtocol: true, TrustedProxies: []string{"10.0.0.0/8"}}, "PROXY"},
	} {
		err := c.edge.validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %q", c.edge, err, c.want)
		}
	}
}
