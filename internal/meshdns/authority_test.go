package meshdns

import (
	"fmt"
	"strings"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/topology"
)

func testMesh() *topology.Mesh {
	return &topology.Mesh{
		Mesh: &v1.MeshSpec{DNS: &v1.MeshDNS{Domains: []string{"demo.local"}}},
		Services: map[string]*v1.ServiceSpec{
			"crystal": {Port: 3000, Hostnames: []string{"crystal.hosted.local"}},
			"nodejs":  {},
			"front":   {},
		},
		Instances: map[string][]v1.Instance{
			"crystal": {
				{ID: "c1", Address: "10.0.0.1", EdgePort: 8443, Healthy: true},
				{ID: "c2", Address: "10.0.0.2", EdgePort: 8444, Healthy: true},
				{ID: "c3", Address: "10.0.0.3", EdgePort: 8443, Healthy: false},
				{ID: "c4", Address: "10.0.0.4", Healthy: true}, // no edge listener
				{ID: "c5", Address: "fd00::5", EdgePort: 8443, Healthy: true},
			},
			"nodejs": {{ID: "n1", Address: "10.0.1.1", Healthy: true}},
			"front":  {{ID: "f1", Address: "10.0.2.1", EdgePort: 9443, Healthy: true}},
			"ingress": {
				{ID: "g1", Address: "10.0.3.1", Healthy: true},
				{ID: "g2", Address: "10.0.3.2", Healthy: false},
			},
		},
		Gateways: map[string]*v1.GatewaySpec{"ingress": {Listeners: []v1.GatewayListener{
			{Port: 8080, Protocol: v1.GatewayHTTP, Routes: []v1.GatewayRoute{{Host: "front.demo.local", Service: "front"}, {Host: "shop.example.com", Service: "front"}}},
			{Port: 8443, Protocol: v1.GatewayTLSPassthrough, Targets: []v1.PassthroughTarget{{SNI: "secure.demo.local", Service: "front"}, {SNI: "*.demo.local", Service: "front"}}},
		}}},
	}
}

func startAuthority(t *testing.T, m *topology.Mesh, cfg AuthorityConfig) (*Authority, string) {
	a := NewAuthority(cfg)
	a.Update(m)
	return a, serve(t, a)
}

func addrsOf(rrs []dns.RR) string {
	var out []string
	for _, rr := range rrs {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		case *dns.SRV:
			out = append(out, fmt.Sprintf("%s:%d", rr.Target, rr.Port))
		}
	}
	return strings.Join(out, " ")
}

func TestAuthorityAnswers(t *testing.T) {
	_, addr := startAuthority(t, testMesh(), AuthorityConfig{})
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
		want  string // addresses answered
		soa   bool   // an SOA in the authority section
	}{
		{"crystal.demo.local.", dns.TypeA, dns.RcodeSuccess, "10.0.0.1 10.0.0.2", false},
		{"CrYsTaL.Demo.Local.", dns.TypeA, dns.RcodeSuccess, "10.0.0.1 10.0.0.2", false},
		{"crystal.hosted.local.", dns.TypeA, dns.RcodeSuccess, "10.0.0.1 10.0.0.2", false},
		{"crystal.demo.local.", dns.TypeAAAA, dns.RcodeSuccess, "fd00::5", false},
		{"crystal.demo.local.", dns.TypeSRV, dns.RcodeSuccess, "ip-10-0-0-1.crystal.demo.local.:8443 ip-10-0-0-2.crystal.demo.local.:8444 ip-fd00--5.crystal.demo.local.:8443", false},
		{"ip-10-0-0-2.crystal.demo.local.", dns.TypeA, dns.RcodeSuccess, "10.0.0.2", false},
		{"crystal.demo.local.", dns.TypeTXT, dns.RcodeSuccess, "", true},      // NODATA
		{"nodejs.demo.local.", dns.TypeA, dns.RcodeSuccess, "", true},         // no edge listener: NODATA
		{"front.demo.local.", dns.TypeA, dns.RcodeSuccess, "10.0.3.1", false}, // the gateway's, healthy
		{"front.demo.local.", dns.TypeSRV, dns.RcodeSuccess, "ip-10-0-3-1.front.demo.local.:8080", false},
		{"secure.demo.local.", dns.TypeSRV, dns.RcodeSuccess, "ip-10-0-3-1.secure.demo.local.:8443", false}, // a pass-through SNI
		{"other.demo.local.", dns.TypeA, dns.RcodeNameError, "", true},                                      // wildcards answer nothing
		{"demo.local.", dns.TypeA, dns.RcodeSuccess, "", true},
		{"demo.local.", dns.TypeSOA, dns.RcodeSuccess, "", false},
		{"nothing.demo.local.", dns.TypeA, dns.RcodeNameError, "", true},
		{"x.crystal.hosted.local.", dns.TypeA, dns.RcodeRefused, "", false}, // a hostname is a name, not a zone
		{"shop.example.com.", dns.TypeA, dns.RcodeRefused, "", false},       // a gateway's host, not the mesh's
		{"example.com.", dns.TypeA, dns.RcodeRefused, "", false},
		{"local.", dns.TypeA, dns.RcodeRefused, "", false},
		{".", dns.TypeNS, dns.RcodeRefused, "", false},
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(network+" "+tc.name+" "+dns.TypeToString[tc.qtype], func(t *testing.T) {
				r := ask(t, addr, network, tc.name, tc.qtype, 0)
				if r.Rcode != tc.rcode {
					t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
				}
				if got := addrsOf(r.Answer); got != tc.want {
					t.Errorf("answer %q, want %q", got, tc.want)
				}
				if r.RecursionAvailable {
					t.Error("RA set: the authority offers no recursion")
				}
				if hasSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == dns.TypeSOA; hasSOA != tc.soa {
					t.Errorf("authority section %v, want SOA: %v", r.Ns, tc.soa)
				}
				for _, rr := range r.Answer {
					if rr.Header().Name != tc.name || rr.Header().Ttl > TTL {
						t.Errorf("record %v: want the question's name %s and TTL <= %d", rr, tc.name, TTL)
					}
				}
				if tc.rcode != dns.RcodeRefused && !r.Authoritative {
					t.Error("AA not set")
				}
			})
		}
	}
	// SRV targets' addresses come along.
	r := ask(t, addr, "udp", "crystal.demo.local.", dns.TypeSRV, 0)
	if got := addrsOf(r.Extra); got != "10.0.0.1 10.0.0.2 fd00::5" {
		t.Errorf("additional %q", got)
	}
}

// TestAuthorityTruncates: an answer too big for the client's UDP size is
// cut with TC set; over TCP it comes whole.
func TestAuthorityTruncates(t *testing.T) {
	m := testMesh()
	for i := range 200 {
		m.Instances["crystal"] = append(m.Instances["crystal"], v1.Instance{ID: fmt.Sprint(i), Address: fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), EdgePort: 8443, Healthy: true})
	}
	_, addr := startAuthority(t, m, AuthorityConfig{})
	r := ask(t, addr, "udp", "crystal.demo.local.", dns.TypeA, 0)
	r.Compress = true // as it came
	if !r.Truncated || r.Len() > 512 {
		t.Errorf("UDP without EDNS0: TC %v, %d bytes; want TC within 512", r.Truncated, r.Len())
	}
	r = ask(t, addr, "udp", "crystal.demo.local.", dns.TypeA, 4096)
	r.Compress = true
	if !r.Truncated || r.Len() > UDPSize {
		t.Errorf("UDP with EDNS0 4096: TC %v, %d bytes; want TC within %d", r.Truncated, r.Len(), UDPSize)
	}
	if opt := r.IsEdns0(); opt == nil || opt.UDPSize() != UDPSize {
		t.Errorf("OPT %v, want one advertising %d", opt, UDPSize)
	}
	r = ask(t, addr, "tcp", "crystal.demo.local.", dns.TypeA, 0)
	if r.Truncated || len(r.Answer) != 202 {
		t.Errorf("TCP: TC %v, %d records; want all 202", r.Truncated, len(r.Answer))
	}
	if r.IsEdns0() != nil {
		t.Error("an OPT answered to a query without one")
	}
}

// TestMalformedQueries sends every kind of bad query to a real listener
// and checks the answer (or its absence).
func TestMalformedQueries(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, addr := startAuthority(t, testMesh(), AuthorityConfig{Metrics: NewMetrics(reg)})
	query := func(edit func(m *dns.Msg)) []byte {
		m := new(dns.Msg)
		m.SetQuestion("crystal.demo.local.", dns.TypeA)
		m.Id = 0x1234
		edit(m)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	valid := query(func(*dns.Msg) {})
	for _, tc := range []struct {
		name  string
		b     []byte
		rcode int // -1: no answer at all
	}{
		{"valid", valid, dns.RcodeSuccess},
		{"no question", query(func(m *dns.Msg) { m.Question = nil }), dns.RcodeFormatError},
		{"two questions", query(func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }), dns.RcodeFormatError},
		{"an answer", query(func(m *dns.Msg) { m.Response = true }), -1},
		{"iquery", query(func(m *dns.Msg) { m.Opcode = dns.OpcodeIQuery }), dns.RcodeNotImplemented},
		{"status", query(func(m *dns.Msg) { m.Opcode = dns.OpcodeStatus }), dns.RcodeNotImplemented},
		{"notify", query(func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), dns.RcodeNotImplemented},
		{"update", query(func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate }), dns.RcodeNotImplemented},
		{"class chaos", query(func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), dns.RcodeRefused},
		{"class any", query(func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassANY }), dns.RcodeRefused},
		{"axfr", query(func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAXFR }), dns.RcodeNotImplemented},
		{"ixfr", query(func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeIXFR }), dns.RcodeNotImplemented},
		{"edns version 1", query(func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) }), dns.RcodeBadVers},
		{"two OPT records", query(func(m *dns.Msg) { m.SetEdns0(1232, false); m.SetEdns0(512, false) }), dns.RcodeFormatError},
		{"edns size below 512", query(func(m *dns.Msg) { m.SetEdns0(100, false) }), dns.RcodeSuccess},
		{"TC set in the query", query(func(m *dns.Msg) { m.Truncated = true }), dns.RcodeSuccess},
		{"header only", valid[:12], dns.RcodeFormatError},
		{"short header", valid[:7], -1},
		{"empty", []byte{}, -1},
		// miekg/dns reads a question cut short in its class as class 0,
		// which is not IN.
		{"question cut short", valid[:len(valid)-2], dns.RcodeRefused},
		{"label past the end", append(append([]byte{}, valid[:12]...), 63, 'a'), dns.RcodeFormatError},
		{"compression loop", append(append([]byte{}, valid[:12]...), 0xc0, 12, 0, 1, 0, 1), dns.RcodeFormatError},
		{"pointer forward", append(append([]byte{}, valid[:12]...), 0xc0, 40, 0, 1, 0, 1), dns.RcodeFormatError},
		{"bad label type", append(append([]byte{}, valid[:12]...), 0x80, 0, 0, 1, 0, 1), dns.RcodeFormatError},
		// Sections that end early are read as far as they go (miekg/dns
		// is lenient there): the one question is answered.
		{"counts beyond the data", func() []byte { b := append([]byte{}, valid...); b[11] = 200; return b }(), dns.RcodeSuccess},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := raw(t, addr, tc.b)
			if tc.rcode < 0 {
				if got != nil {
					t.Errorf("answered %x, want nothing", got)
				}
				return
			}
			if got == nil {
				t.Fatal("no answer")
			}
			r := new(dns.Msg)
			if err := r.Unpack(got); err != nil {
				t.Fatalf("answer does not unpack: %v", err)
			}
			if r.Rcode != tc.rcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
			}
			if !r.Response || r.RecursionAvailable {
				t.Errorf("QR %v RA %v, want an answer without RA", r.Response, r.RecursionAvailable)
			}
		})
	}
	if n := counted(t, reg, resultFormErr); n < 5 {
		t.Errorf("formerr counted %v times", n)
	}
}

func TestRateLimitPerClient(t *testing.T) {
	_, addr := startAuthority(t, testMesh(), AuthorityConfig{Rate: 0.001, Burst: 3})
	for i := range 3 {
		if r := ask(t, addr, "tcp", "crystal.demo.local.", dns.TypeA, 0); r.Rcode != dns.RcodeSuccess {
			t.Fatalf("query %d: %s within the burst", i, dns.RcodeToString[r.Rcode])
		}
	}
	if r := ask(t, addr, "tcp", "crystal.demo.local.", dns.TypeA, 0); r.Rcode != dns.RcodeRefused {
		t.Errorf("over the rate over TCP: %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	if got := raw(t, addr, func() []byte {
		m := new(dns.Msg)
		m.SetQuestion("crystal.demo.local.", dns.TypeA)
		b, _ := m.Pack()
		return b
	}()); got != nil {
		// raw's probe is over the rate too: it is REFUSED, b's answer
		// must be the same, never records.
		r := new(dns.Msg)
		if r.Unpack(got) == nil && len(r.Answer) > 0 {
			t.Errorf("over the rate, answered %v", r.Answer)
		}
	}
	// Another client (another loopback address) has its own bucket.
	c := &dns.Client{Net: "udp", Dialer: dialFrom(t, "127.0.0.2")}
	m := new(dns.Msg)
	m.SetQuestion("crystal.demo.local.", dns.TypeA)
	if r, _, err := c.Exchange(m, addr); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Errorf("another client: %v %v", r, err)
	}
}

// counted is trellis_dns_queries_total{result} in reg.
func counted(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if mf.GetName() == "trellis_dns_queries_total" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
