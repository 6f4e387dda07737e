package meshdns

import (
	"fmt"
	"testing"
)

func TestVIPsStableAndDistinct(t *testing.T) {
	var many []string
	for i := range 3000 {
		many = append(many, fmt.Sprintf("svc-%d", i))
	}
	a := VIPs(many)
	if len(a) != len(many) {
		t.Fatalf("%d addresses for %d services", len(a), len(many))
	}
	seen := map[string]string{}
	for s, ip := range a {
		if !VIPRange.Contains(ip) || ip == VIPRange.Addr() || ip.String() == "240.240.255.255" {
			t.Errorf("%s: %s is outside the range or its ends", s, ip)
		}
		if o, ok := seen[ip.String()]; ok {
			t.Errorf("%s and %s share %s", s, o, ip)
		}
		seen[ip.String()] = s
	}
	// The same set in another order gives the same addresses.
	rev := make([]string, len(many))
	for i, s := range many {
		rev[len(many)-1-i] = s
	}
	for s, ip := range VIPs(rev) {
		if a[s] != ip {
			t.Fatalf("%s: %s, then %s in another order", s, a[s], ip)
		}
	}
	// A service's address does not depend on the others, barring a
	// collision (none among these two).
	if one, two := VIPs([]string{"crystal"}), VIPs([]string{"crystal", "nodejs"}); one["crystal"] != two["crystal"] {
		t.Errorf("crystal moved from %s to %s when nodejs came", one["crystal"], two["crystal"])
	}
}
