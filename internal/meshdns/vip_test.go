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

// collider returns a name that sorts before name and hashes to its slot.
func collider(t *testing.T, name string) string {
	t.Helper()
	want := slotOf(name)
	for i := range 1 << 22 {
		if c := fmt.Sprintf("a%d", i); slotOf(c) == want {
			return c
		}
	}
	t.Fatalf("no name collides with %s", name)
	return ""
}

// An app keeps the address its resolver answered (for the TTL, or for
// ever: many runtimes cache) and connects to it later. A new service
// taking that slot must not move the old one, nor may a service that
// comes after one left get its address: either way the transparent
// egress would send the app's connection to another service.
func TestVIPTableKeepsAddresses(t *testing.T) {
	c := collider(t, "crystal")
	var tab VIPTable
	first := tab.Assign([]string{"crystal"})["crystal"]
	both := tab.Assign([]string{c, "crystal"})
	if both["crystal"] != first {
		t.Errorf("crystal moved from %s to %s when %s came", first, both["crystal"], c)
	}
	if both[c] == first {
		t.Errorf("%s took crystal's %s", c, first)
	}

	var tab2 VIPTable
	gone := tab2.Assign([]string{"crystal"})["crystal"]
	if got := tab2.Assign([]string{c})[c]; got == gone {
		t.Errorf("%s got %s, crystal's until it left", c, got)
	}
	if got := tab2.Assign([]string{c, "crystal"})["crystal"]; got != gone {
		t.Errorf("crystal came back at %s, want its %s", got, gone)
	}
}
