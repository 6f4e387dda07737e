package meshdns

import (
	"net"
	"testing"
)

// An IPv6 client holds a /64 at least: each address in it is the same
// client, or one host could take a fresh bucket per query.
func TestRateLimitIPv6ByPrefix(t *testing.T) {
	c := newClientLimits(0.001, 1)
	from := func(ip string) *net.UDPAddr { return &net.UDPAddr{IP: net.ParseIP(ip), Port: 5353} }
	if !c.allow(from("2001:db8::1")) {
		t.Fatal("first query refused")
	}
	if c.allow(from("2001:db8::2")) {
		t.Error("another address of the same /64 got a bucket of its own")
	}
	if !c.allow(from("2001:db8:0:1::1")) {
		t.Error("another /64 shares the first one's bucket")
	}
}

// Clients past the table's bound, none idle, do not empty it: a flood
// from many (forged) sources must not hand a client over its rate a
// full bucket again. They share one bucket instead.
func TestRateLimitFloodKeepsBuckets(t *testing.T) {
	c := newClientLimits(0.001, 1)
	victim := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 53}
	if !c.allow(victim) || c.allow(victim) {
		t.Fatal("victim: want one query allowed, then none")
	}
	allowed := 0
	for i := range maxClients + 100 {
		if c.allow(&net.UDPAddr{IP: net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)), Port: 53}) {
			allowed++
		}
	}
	if c.allow(victim) {
		t.Error("the victim's bucket was refilled by a flood of other sources")
	}
	if allowed > maxClients+1 {
		t.Errorf("%d of %d flooding sources answered, want at most %d", allowed, maxClients+100, maxClients+1)
	}
}
