package meshdns

import (
	"hash/fnv"
	"net/netip"
	"slices"
	"sync"
)

// VIPRange holds the virtual IPs of mesh services: 240.240.0.0/16, in the
// 240.0.0.0/4 block reserved for future use (RFC 1112), which no host or
// network uses, so an address there can only be the mesh's.
var VIPRange = netip.MustParsePrefix("240.240.0.0/16")

// vipSlots are the usable offsets in VIPRange: .0.0 and .255.255 are left
// out, as network and broadcast addresses look to some tools.
const vipSlots = 1<<16 - 2

// VIPs gives each service a virtual IP in VIPRange: the slot its name
// hashes to, or the next free one, placed in name order. It is a fresh
// VIPTable's first assignment: the same set of services always gets the
// same addresses.
func VIPs(services []string) map[string]netip.Addr {
	var t VIPTable
	return t.Assign(services)
}

// VIPTable keeps the virtual IPs one proxy has handed out. Apps keep the
// address their resolver answered (for the TTL, or for ever: many
// runtimes cache) and connect to it later, so an address, once given to
// a service, stays that service's for the table's life: a new service
// whose name hashes to a taken slot takes the next free one, whatever
// their names' order, and the slot of a service that left is not given
// to another while any other is free (65,534 services later). The
// resolver and the transparent egress share one table, so that they
// agree. Safe for concurrent use; the zero value is empty.
type VIPTable struct {
	mu    sync.Mutex
	slots map[string]uint32 // service -> slot, the departed included
	taken map[uint32]bool
}

// Assign returns the virtual IPs of services, placing those the table
// has never seen.
func (t *VIPTable) Assign(services []string) map[string]netip.Addr {
	names := slices.Clone(services)
	slices.Sort(names)
	names = slices.Compact(names)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.slots == nil {
		t.slots, t.taken = map[string]uint32{}, map[uint32]bool{}
	}
	fresh := 0
	for _, s := range names {
		if _, ok := t.slots[s]; !ok {
			fresh++
		}
	}
	if len(t.slots)+fresh > vipSlots {
		// Full of departed services' slots: only now are they given
		// out again, the current services keeping theirs.
		for s, slot := range t.slots {
			if _, ok := slices.BinarySearch(names, s); !ok {
				delete(t.slots, s)
				delete(t.taken, slot)
			}
		}
	}
	out := make(map[string]netip.Addr, len(names))
	for _, s := range names {
		slot, ok := t.slots[s]
		if !ok {
			if len(t.taken) == vipSlots {
				break // more services than addresses: the rest get none
			}
			slot = slotOf(s)
			for t.taken[slot] {
				slot = (slot + 1) % vipSlots
			}
			t.slots[s], t.taken[slot] = slot, true
		}
		off := slot + 1
		b := VIPRange.Addr().As4()
		b[2], b[3] = byte(off>>8), byte(off)
		out[s] = netip.AddrFrom4(b)
	}
	return out
}

// slotOf is the slot name hashes to.
func slotOf(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return h.Sum32() % vipSlots
}
