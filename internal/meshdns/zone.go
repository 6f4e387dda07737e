package meshdns

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// zone is one immutable view of the names a server answers: built whole
// from the mesh's state, then only read.
type zone struct {
	// domains are the mesh's domains, lowercase without the final dot,
	// longest first (so the first that holds a name is its closest apex).
	domains []string
	// exact are the Services' hostnames: each the apex of itself alone
	// when no domain holds it; the names under it are not the mesh's.
	exact map[string]bool
	// names holds every name with records, and every name between one and
	// its apex (an empty non-terminal answers NODATA, not NXDOMAIN).
	names map[string]*node
	// serial is the SOA serial of negative answers.
	serial uint32
}

// node is one name's records. A node without records answers NODATA.
type node struct {
	addrs []netip.Addr // A and AAAA
	srv   []srvTarget
}

// srvTarget is one SRV record: the target is a name of the zone, written
// as prefix + "." + the question's name, so that it keeps its case.
type srvTarget struct {
	prefix string // "" for the name itself
	port   uint16
}

func newZone(domains, hostnames []string, serial uint32) *zone {
	z := &zone{names: map[string]*node{}, exact: map[string]bool{}, serial: serial}
	for _, d := range domains {
		d = strings.ToLower(strings.TrimSuffix(d, "."))
		if d != "" && !slices.Contains(z.domains, d) {
			z.domains = append(z.domains, d)
		}
	}
	for _, h := range hostnames {
		if h = strings.ToLower(strings.TrimSuffix(h, ".")); h != "" {
			z.exact[h] = true
		}
	}
	slices.SortFunc(z.domains, func(a, b string) int { return len(b) - len(a) })
	return z
}

// apex returns the closest mesh domain holding name (lowercase, no final
// dot), else name itself when it is a hostname, else "".
func (z *zone) apex(name string) string {
	for _, d := range z.domains {
		if name == d || strings.HasSuffix(name, "."+d) {
			return d
		}
	}
	if z.exact[name] {
		return name
	}
	return ""
}

// add returns name's node, making it and the empty non-terminals above it
// up to and with its apex. A name under no domain is not added (nil).
func (z *zone) add(name string) *node {
	name = strings.ToLower(name)
	apex := z.apex(name)
	if apex == "" {
		return nil
	}
	n := z.names[name]
	if n == nil {
		n = &node{}
		z.names[name] = n
	}
	for p := name; p != apex; {
		_, p, _ = strings.Cut(p, ".")
		if z.names[p] == nil {
			z.names[p] = &node{}
		}
	}
	return n
}

// addExact is add for a name that is the zone's even where no domain
// holds it, as the SRV targets under a hostname are.
func (z *zone) addExact(name string) *node {
	z.exact[strings.ToLower(name)] = true
	return z.add(name)
}

// addAddr adds a to n once.
func (n *node) addAddr(a netip.Addr) {
	a = a.Unmap()
	if !slices.Contains(n.addrs, a) {
		n.addrs = append(n.addrs, a)
	}
}

func (n *node) addSRV(t srvTarget) {
	if !slices.Contains(n.srv, t) {
		n.srv = append(n.srv, t)
	}
}

// lookup is the outcome of a name in a zone.
type lookup int

const (
	outside lookup = iota // under no mesh domain
	missing               // under one, but no such name (NXDOMAIN)
	found                 // a name of the zone
)

func (z *zone) lookup(qname string) (*node, string, lookup) {
	name := strings.ToLower(strings.TrimSuffix(qname, "."))
	apex := z.apex(name)
	if apex == "" {
		return nil, "", outside
	}
	// An apex exists only with a name at or under it: the snapshot's
	// domains hold every Service's hostnames, also those of services the
	// app may not call, and an empty apex answering NODATA would tell the
	// app that such a name exists. NXDOMAIN there also says, rightly,
	// that nothing under it exists (RFC 8020).
	if n := z.names[name]; n != nil {
		return n, apex, found
	}
	return nil, apex, missing
}

// fill answers q from z into reply: records of n for the question's type,
// an SOA in the authority section when there are none, and the addresses
// of SRV targets as additional records. It returns the result to count.
func (z *zone) fill(reply *dns.Msg, q dns.Question, n *node, apex string, res lookup) string {
	reply.Authoritative = true
	if res == missing {
		reply.Rcode = dns.RcodeNameError
		reply.Ns = []dns.RR{z.soa(q.Name, apex)}
		return resultNXDomain
	}
	switch q.Qtype {
	case dns.TypeA, dns.TypeAAAA, dns.TypeANY:
		reply.Answer = addrRecords(q.Name, n.addrs, q.Qtype)
	case dns.TypeSRV:
		for _, t := range n.srv {
			target := q.Name
			if t.prefix != "" {
				target = t.prefix + "." + q.Name
			}
			reply.Answer = append(reply.Answer, &dns.SRV{
				Hdr:      dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: TTL},
				Priority: 10, Weight: 10, Port: t.port, Target: dns.Fqdn(target),
			})
			if tn, _, r := z.lookup(target); r == found {
				reply.Extra = append(reply.Extra, addrRecords(dns.Fqdn(target), tn.addrs, dns.TypeANY)...)
			}
		}
	case dns.TypeSOA:
		if strings.EqualFold(strings.TrimSuffix(q.Name, "."), apex) {
			reply.Answer = []dns.RR{z.soa(q.Name, apex)}
		}
	}
	if len(reply.Answer) == 0 {
		reply.Ns = []dns.RR{z.soa(q.Name, apex)}
		return resultNoData
	}
	return resultAnswer
}

// addrRecords are the A (qtype A), AAAA (AAAA) or both (ANY) records of
// addrs, named name.
func addrRecords(name string, addrs []netip.Addr, qtype uint16) []dns.RR {
	var out []dns.RR
	for _, a := range addrs {
		switch {
		case a.Is4() && qtype != dns.TypeAAAA:
			out = append(out, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: TTL}, A: a.AsSlice()})
		case a.Is6() && qtype != dns.TypeA:
			out = append(out, &dns.AAAA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: TTL}, AAAA: a.AsSlice()})
		}
	}
	return out
}

// soa is the zone's SOA at apex, written with the case the question gave
// it; its minimum is the negative TTL.
func (z *zone) soa(qname, apex string) dns.RR {
	owner := dns.Fqdn(apex)
	if q := strings.TrimSuffix(qname, "."); len(q) >= len(apex) {
		owner = dns.Fqdn(q[len(q)-len(apex):])
	}
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: TTL},
		Ns:  dns.Fqdn("ns." + apex), Mbox: dns.Fqdn("hostmaster." + apex),
		Serial: z.serial, Refresh: 60, Retry: 10, Expire: 600, Minttl: TTL,
	}
}
