package v1

import "testing"

// Edge names that resolve to an address without DNS pass the numeric
// check, which reads only a decimal last label: inet_aton (glibc,
// getaddrinfo, so curl) and the WHATWG URL parser (browsers) read a
// last label of 0x and hex digits as a number, and so the whole name as
// an IPv4 address. curl https://0x7f000001:PORT/ dials 127.0.0.1 and
// accepts an edge certificate for "0x7f000001". Debian and Ubuntu map
// ip6-localhost and ip6-loopback to ::1 in /etc/hosts.
func TestReviewEdgeNameAddressesInDisguise(t *testing.T) {
	for _, n := range []string{"0x7f000001", "0X7F000001", "0x7f.0x1", "127.0.0.0x1", "1.0x1", "ip6-localhost", "ip6-loopback"} {
		if err := ValidateEdgeName(n); err == nil {
			t.Errorf("ValidateEdgeName(%q) = nil, want it refused as an address or loopback name", n)
		}
	}
}
