package meshdns

import (
	"hash/fnv"
	"net/netip"
	"slices"
)

// VIPRange holds the virtual IPs of mesh services: 240.240.0.0/16, in the
// 240.0.0.0/4 block reserved for future use (RFC 1112), which no host or
// network uses, so an address there can only be the mesh's.
var VIPRange = netip.MustParsePrefix("240.240.0.0/16")

// vipSlots are the usable offsets in VIPRange: .0.0 and .255.255 are left
// out, as network and broadcast addresses look to some tools.
const vipSlots = 1<<16 - 2

// VIPs gives each service a virtual IP in VIPRange: the slot its name
// hashes to, or the next free one. Services are placed in name order, so
// the same set of services always gets the same addresses, and a
// service's address changes only if a new name takes its slot first (one
// in tens of thousands for a mesh of a few dozen services).
func VIPs(services []string) map[string]netip.Addr {
	names := slices.Clone(services)
	slices.Sort(names)
	names = slices.Compact(names)
	out := make(map[string]netip.Addr, len(names))
	taken := make(map[uint32]bool, len(names))
	for _, s := range names {
		if len(taken) == vipSlots {
			break
		}
		h := fnv.New32a()
		h.Write([]byte(s))
		slot := h.Sum32() % vipSlots
		for taken[slot] {
			slot = (slot + 1) % vipSlots
		}
		taken[slot] = true
		off := slot + 1
		b := VIPRange.Addr().As4()
		b[2], b[3] = byte(off>>8), byte(off)
		out[s] = netip.AddrFrom4(b)
	}
	return out
}
