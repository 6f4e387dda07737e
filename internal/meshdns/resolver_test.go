package meshdns

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/trellis-mesh/trellis/internal/topology"
)

// hostResolverStub is a second DNS server on loopback standing in for the
// host's resolver: it answers A for names under example.test.
func hostResolverStub(t *testing.T) string {
	return serve(t, dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		r := new(dns.Msg)
		r.SetReply(req)
		r.RecursionAvailable = true
		q := req.Question[0]
		if strings.HasSuffix(strings.ToLower(q.Name), "example.test.") && q.Qtype == dns.TypeA {
			r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)}}
		} else {
			r.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(r)
	}))
}

func testSnapshot() *topology.Snapshot {
	return &topology.Snapshot{
		Service:      "front",
		DNSDomains:   []string{"demo.local"},
		DNSHostnames: []string{"crystal.hosted.local"},
		Upstreams: []topology.Upstream{
			{Service: "crystal", Port: 3000, Hostnames: []string{"crystal.demo.local", "crystal.hosted.local"}},
			{Service: "db", Hostnames: []string{"db.demo.local"}},
		},
	}
}

func TestResolverVIP(t *testing.T) {
	r, err := NewResolver(ResolverConfig{Upstream: hostResolverStub(t)})
	if err != nil {
		t.Fatal(err)
	}
	r.Update(testSnapshot())
	addr := serve(t, r)
	vips := VIPs([]string{"crystal", "db"})
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
		want  string
	}{
		{"crystal.demo.local.", dns.TypeA, dns.RcodeSuccess, vips["crystal"].String()},
		{"CRYSTAL.Hosted.Local.", dns.TypeA, dns.RcodeSuccess, vips["crystal"].String()},
		{"crystal.demo.local.", dns.TypeAAAA, dns.RcodeSuccess, ""},
		{"crystal.demo.local.", dns.TypeSRV, dns.RcodeSuccess, "crystal.demo.local.:3000"},
		{"db.demo.local.", dns.TypeA, dns.RcodeSuccess, vips["db"].String()},
		{"db.demo.local.", dns.TypeSRV, dns.RcodeSuccess, ""},          // no port declared
		{"nodejs.demo.local.", dns.TypeA, dns.RcodeNameError, ""},      // a mesh name it may not call
		{"x.crystal.hosted.local.", dns.TypeA, dns.RcodeNameError, ""}, // under a hostname
		{"www.example.test.", dns.TypeA, dns.RcodeSuccess, "192.0.2.7"},
		{"WWW.Example.Test.", dns.TypeA, dns.RcodeSuccess, "192.0.2.7"},
		{"nowhere.test.", dns.TypeA, dns.RcodeNameError, ""}, // the host resolver's NXDOMAIN
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(network+" "+tc.name+" "+dns.TypeToString[tc.qtype], func(t *testing.T) {
				m := ask(t, addr, network, tc.name, tc.qtype, 1232)
				if m.Rcode != tc.rcode {
					t.Errorf("rcode %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tc.rcode])
				}
				if got := addrsOf(m.Answer); got != tc.want {
					t.Errorf("answer %q, want %q", got, tc.want)
				}
				if m.Question[0].Name != tc.name {
					t.Errorf("question %s, want the app's %s", m.Question[0].Name, tc.name)
				}
			})
		}
	}
}

func TestResolverLocalMode(t *testing.T) {
	var logs bytes.Buffer
	r, err := NewResolver(ResolverConfig{
		Mode: ModeLocal, Upstream: "127.0.0.1:9", Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Listeners: map[string]netip.AddrPort{
			"crystal": netip.MustParseAddrPort("127.0.0.1:3000"),
			"db":      netip.MustParseAddrPort("127.0.0.1:5432"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.Update(testSnapshot())
	addr := serve(t, r)
	if got := addrsOf(ask(t, addr, "udp", "crystal.demo.local.", dns.TypeA, 0).Answer); got != "127.0.0.1" {
		t.Errorf("crystal: %q, want 127.0.0.1", got)
	}
	if got := addrsOf(ask(t, addr, "udp", "crystal.demo.local.", dns.TypeSRV, 0).Answer); got != "crystal.demo.local.:3000" {
		t.Errorf("crystal SRV: %q", got)
	}
	m := ask(t, addr, "udp", "db.demo.local.", dns.TypeA, 0)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
		t.Errorf("db (no Service port): %s %v, want NODATA", dns.RcodeToString[m.Rcode], m.Answer)
	}
	if !strings.Contains(logs.String(), "db.demo.local (its Service declares no port)") {
		t.Errorf("log does not say why db is not answered: %s", logs.String())
	}
	// The same snapshot again logs nothing new.
	n := logs.Len()
	r.Update(testSnapshot())
	if logs.Len() != n {
		t.Errorf("logged again: %s", logs.String()[n:])
	}
}

// TestResolverLocalModeSharedPort: upstreams on one port (every backend
// on 3000) each answer their own loopback address; a listener that is not
// on loopback answers nothing, and the log says why.
func TestResolverLocalModeSharedPort(t *testing.T) {
	var logs bytes.Buffer
	r, err := NewResolver(ResolverConfig{
		Mode: ModeLocal, Upstream: "127.0.0.1:9", Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Listeners: map[string]netip.AddrPort{
			"crystal": netip.MustParseAddrPort("127.0.0.2:3000"),
			"nodejs":  netip.MustParseAddrPort("127.0.0.3:3000"),
			"db":      netip.MustParseAddrPort("10.0.0.1:3000"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.Update(&topology.Snapshot{
		Service:    "front",
		DNSDomains: []string{"demo.local"},
		Upstreams: []topology.Upstream{
			{Service: "crystal", Port: 3000, Hostnames: []string{"crystal.demo.local"}},
			{Service: "db", Port: 3000, Hostnames: []string{"db.demo.local"}},
			{Service: "nodejs", Port: 3000, Hostnames: []string{"nodejs.demo.local"}},
		},
	})
	addr := serve(t, r)
	for name, want := range map[string]string{"crystal.demo.local.": "127.0.0.2", "nodejs.demo.local.": "127.0.0.3", "db.demo.local.": ""} {
		if got := addrsOf(ask(t, addr, "udp", name, dns.TypeA, 0).Answer); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if !strings.Contains(logs.String(), "db.demo.local (listener on 10.0.0.1:3000, not a 127.x address)") {
		t.Errorf("log does not say why db is not answered: %s", logs.String())
	}
}

// TestResolverForwardBounds: a host resolver that never answers costs a
// SERVFAIL after the timeout, and forwards beyond the bound are refused
// at once with SERVFAIL.
func TestResolverForwardBounds(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	r, err := NewResolver(ResolverConfig{Upstream: silent.LocalAddr().String(), MaxForwards: 1})
	if err != nil {
		t.Fatal(err)
	}
	r.Update(testSnapshot())
	addr := serve(t, r)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if m := ask(t, addr, "udp", "slow.example.test.", dns.TypeA, 0); m.Rcode != dns.RcodeServerFailure {
			t.Errorf("unanswered forward: %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
		}
	}()
	// Once the first forward reached the host resolver, it holds the one
	// slot.
	buf := make([]byte, 512)
	if _, _, err := silent.ReadFrom(buf); err != nil {
		t.Fatal(err)
	}
	if m := ask(t, addr, "udp", "next.example.test.", dns.TypeA, 0); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("forward over the bound: %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
	// Mesh names do not wait for forwards.
	if m := ask(t, addr, "udp", "crystal.demo.local.", dns.TypeA, 0); len(m.Answer) != 1 {
		t.Errorf("mesh name while forwards are busy: %v", m)
	}
	wg.Wait()
}

func TestResolverUpstreamFromResolvConf(t *testing.T) {
	f := t.TempDir() + "/resolv.conf"
	writeFile(t, f, "search example.test\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n")
	r, err := NewResolver(ResolverConfig{ResolvConf: f})
	if err != nil {
		t.Fatal(err)
	}
	if r.Upstream() != "192.0.2.53:53" {
		t.Errorf("upstream %s, want the first nameserver", r.Upstream())
	}
	writeFile(t, f, "search example.test\n")
	if _, err := NewResolver(ResolverConfig{ResolvConf: f}); err == nil || !strings.Contains(err.Error(), "no nameserver") {
		t.Errorf("no nameserver: %v", err)
	}
	for _, bad := range []string{"resolver.example", "192.0.2.1:0", "192.0.2.1:x"} {
		if _, err := NewResolver(ResolverConfig{Upstream: bad}); err == nil {
			t.Errorf("upstream %q accepted", bad)
		}
	}
	if _, err := NewResolver(ResolverConfig{Upstream: "192.0.2.1", Mode: "magic"}); err == nil {
		t.Error("mode magic accepted")
	}
}

// The resolver's answers keep their address across snapshots in which a
// new upstream's name hashes to an answered one's slot.
func TestResolverVIPsStableAcrossUpdates(t *testing.T) {
	c := collider(t, "crystal")
	r, err := NewResolver(ResolverConfig{Upstream: "127.0.0.1:9"})
	if err != nil {
		t.Fatal(err)
	}
	snap := func(svcs ...string) *topology.Snapshot {
		s := &topology.Snapshot{DNSDomains: []string{"demo.local"}}
		for _, svc := range svcs {
			s.Upstreams = append(s.Upstreams, topology.Upstream{Service: svc, Hostnames: []string{svc + ".demo.local"}})
		}
		return s
	}
	ask := func(name string) string {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		reply, _ := r.respond(context.Background(), m, false)
		if len(reply.Answer) != 1 {
			t.Fatalf("%s: %v", name, reply)
		}
		return reply.Answer[0].(*dns.A).A.String()
	}
	r.Update(snap("crystal"))
	before := ask("crystal.demo.local.")
	r.Update(snap(c, "crystal"))
	if after := ask("crystal.demo.local."); after != before {
		t.Errorf("crystal answered %s, then %s once %s came", before, after, c)
	}
	if other := ask(c + ".demo.local."); other == before {
		t.Errorf("%s answers crystal's %s", c, other)
	}
}

// A hostname of a service the app may not call is in the snapshot's
// DNSDomains (so that the name is never forwarded), but the app learns
// nothing of it: NXDOMAIN, as for <service>.<domain>, not the NODATA
// that would tell it the name exists. A mesh domain with an upstream
// under it still exists (NODATA, and its SOA).
func TestResolverOtherServicesHostnamesAreNXDOMAIN(t *testing.T) {
	r, err := NewResolver(ResolverConfig{Upstream: "127.0.0.1:9"})
	if err != nil {
		t.Fatal(err)
	}
	r.Update(&topology.Snapshot{
		Service:      "front",
		DNSDomains:   []string{"demo.local"},
		DNSHostnames: []string{"nodejs.hosted.local"},
		Upstreams:    []topology.Upstream{{Service: "crystal", Hostnames: []string{"crystal.demo.local"}}},
	})
	addr := serve(t, r)
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
	}{
		{"nodejs.hosted.local.", dns.TypeA, dns.RcodeNameError},
		{"NodeJS.Hosted.Local.", dns.TypeAAAA, dns.RcodeNameError},
		{"nodejs.hosted.local.", dns.TypeSOA, dns.RcodeNameError},
		{"nodejs.demo.local.", dns.TypeA, dns.RcodeNameError},
		{"demo.local.", dns.TypeA, dns.RcodeSuccess},
		{"crystal.demo.local.", dns.TypeA, dns.RcodeSuccess},
	} {
		if got := ask(t, addr, "udp", tc.name, tc.qtype, 0).Rcode; got != tc.rcode {
			t.Errorf("%s %s: %s, want %s", tc.name, dns.TypeToString[tc.qtype], dns.RcodeToString[got], dns.RcodeToString[tc.rcode])
		}
	}
}

// A Service's hostname is a name, not a zone: the names under it are
// the host resolver's, for every app. Under a mesh domain, every name is
// the mesh's.
func TestResolverHostnamesAreNamesNotZones(t *testing.T) {
	host := serve(t, dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		r := new(dns.Msg)
		r.SetReply(req)
		r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)}}
		w.WriteMsg(r)
	}))
	r, err := NewResolver(ResolverConfig{Upstream: host})
	if err != nil {
		t.Fatal(err)
	}
	r.Update(&topology.Snapshot{
		Service:      "front",
		DNSDomains:   []string{"demo.local"},
		DNSHostnames: []string{"api.example.com", "crystal.hosted.local", "nodejs.hosted.local"},
		Upstreams:    []topology.Upstream{{Service: "crystal", Hostnames: []string{"crystal.demo.local", "crystal.hosted.local"}}},
	})
	addr := serve(t, r)
	vip := VIPs([]string{"crystal"})["crystal"].String()
	for _, tc := range []struct {
		name  string
		rcode int
		want  string
	}{
		{"crystal.hosted.local.", dns.RcodeSuccess, vip},
		{"nodejs.hosted.local.", dns.RcodeNameError, ""},
		{"api.example.com.", dns.RcodeNameError, ""},
		{"www.example.com.", dns.RcodeSuccess, "192.0.2.7"},
		{"v2.api.example.com.", dns.RcodeSuccess, "192.0.2.7"},
		{"x.crystal.hosted.local.", dns.RcodeSuccess, "192.0.2.7"},
		{"hosted.local.", dns.RcodeSuccess, "192.0.2.7"},
		{"x.crystal.demo.local.", dns.RcodeNameError, ""},
	} {
		m := ask(t, addr, "udp", tc.name, dns.TypeA, 0)
		if got := addrsOf(m.Answer); m.Rcode != tc.rcode || got != tc.want {
			t.Errorf("%s: %s %q, want %s %q", tc.name, dns.RcodeToString[m.Rcode], got, dns.RcodeToString[tc.rcode], tc.want)
		}
	}
}
