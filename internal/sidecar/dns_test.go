package sidecar

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/trellis-mesh/trellis/internal/meshdns"
	"github.com/trellis-mesh/trellis/internal/topology"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// stubHostResolver is a second DNS server on loopback, the "host
// resolver": it answers A 192.0.2.7 for every name.
func stubHostResolver(t *testing.T) string {
	t.Helper()
	ls, err := meshdns.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- meshdns.Serve(ctx, ls, dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
			r := new(dns.Msg)
			r.SetReply(req)
			r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)}}
			w.WriteMsg(r)
		}))
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ls.Addr()
}

// The proxy's resolver, fed the snapshot the proxy applies (here the
// persisted one: no control plane runs), answers its app's upstream with
// its virtual IP, NXDOMAIN for a mesh name the app may not call, and the
// host resolver's answer for any other name; the transparent egress maps
// that virtual IP back to the upstream.
func TestProxyDNSForItsApp(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	cert := ca.SVID(t, "front", time.Hour)
	snap := &topology.Snapshot{
		Version: "v1", Service: "front", TrustDomain: "trellis.local", RootsPEM: string(ca.RootsPEM()), MTLS: "strict",
		DNSDomains: []string{"appmeshworkshop.hosted.local", "demo.local"},
		Upstreams: []topology.Upstream{{Service: "crystal", Protocol: "tcp", Port: 3000, Endpoints: []topology.Endpoint{},
			Hostnames: []string{"crystal.appmeshworkshop.hosted.local", "crystal.demo.local"}}},
	}
	dir := t.TempDir()
	if err := saveState(dir, persisted{ChainPEM: chainPEM(cert), KeyPEM: string(trellistest.KeyPEM(t, cert)), Snapshot: snap}); err != nil {
		t.Fatal(err)
	}
	appL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := trellistest.Serve(t, appL, func(c net.Conn) { io.Copy(io.Discard, c) })
	dnsAddr := "127.0.0.1:" + strconv.Itoa(trellistest.FreePort(t))
	ready := make(chan struct{})
	p, err := New(Config{Service: "front", AppAddr: app, Server: "127.0.0.1:1", Token: "t", StateDir: dir,
		Upstreams:    []Upstream{{Service: "crystal", Listen: "127.0.0.1:" + strconv.Itoa(trellistest.FreePort(t))}},
		DNS:          &DNS{Listen: dnsAddr, Upstream: stubHostResolver(t)},
		DrainTimeout: time.Second, HealthInterval: 50 * time.Millisecond,
		OnReady: func(string, string) { close(ready) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-runErr:
		t.Fatalf("Run ended before ready: %v", err)
	}
	vip := meshdns.VIPs([]string{"crystal"})["crystal"]
	for _, tc := range []struct {
		name  string
		rcode int
		want  string
	}{
		{"crystal.appmeshworkshop.hosted.local.", dns.RcodeSuccess, vip.String()},
		{"Crystal.Demo.Local.", dns.RcodeSuccess, vip.String()},
		{"nodejs.appmeshworkshop.hosted.local.", dns.RcodeNameError, ""},
		{"www.example.test.", dns.RcodeSuccess, "192.0.2.7"},
	} {
		m := new(dns.Msg)
		m.SetQuestion(tc.name, dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, dnsAddr)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var got []string
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				got = append(got, a.A.String())
			}
		}
		if r.Rcode != tc.rcode || strings.Join(got, " ") != tc.want {
			t.Errorf("%s: %s %v, want %s %q", tc.name, dns.RcodeToString[r.Rcode], got, dns.RcodeToString[tc.rcode], tc.want)
		}
	}
	if svc := p.serviceAt(vip); svc != "crystal" {
		t.Errorf("transparent egress maps %s to %q, want crystal", vip, svc)
	}
	if svc := p.serviceAt(netip.MustParseAddr("240.240.0.1")); svc != "" && vip.String() != "240.240.0.1" {
		t.Errorf("an unassigned virtual IP maps to %q", svc)
	}
}

func TestDNSConfigValidated(t *testing.T) {
	base := Config{Service: "a", AppAddr: "127.0.0.1:1", Server: "127.0.0.1:2", Token: "t"}
	for _, d := range []DNS{
		{Listen: "localhost:x"},
		{Listen: "127.0.0.1:15053", Mode: "magic"},
		{Listen: "127.0.0.1:15053", Upstream: "127.0.0.1:15053"},
		// Off loopback the resolver would forward any stranger's query
		// to the host's resolver: an open resolver.
		{Listen: ":15053"},
		{Listen: "0.0.0.0:53"},
		{Listen: "[::]:15053"},
		{Listen: "10.0.0.5:15053"},
	} {
		c := base
		c.DNS = &d
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "dns") {
			t.Errorf("%+v: %v, want a dns error", d, err)
		}
	}
	for _, l := range []string{"127.0.0.1:15053", "127.0.0.53:53", "[::1]:15053", "localhost:15053"} {
		c := base
		c.DNS = &DNS{Listen: l}
		if err := c.Validate(); err != nil {
			t.Errorf("dns listen %s: %v, want none", l, err)
		}
	}
}

// The transparent egress maps a virtual IP to the service the app's
// resolver answered it for, also after a snapshot in which a new
// upstream's name hashes to that address's slot.
func TestTransparentVIPKeptAcrossSnapshots(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	p, err := New(Config{Service: "front", AppAddr: "127.0.0.1:1", Server: "127.0.0.1:1", Token: "t", StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// "a447" sorts before crystal and hashes to its slot (meshdns's
	// collider finds it).
	snap := func(version string, svcs ...string) *topology.Snapshot {
		s := &topology.Snapshot{Version: version, Service: "front", TrustDomain: "trellis.local", RootsPEM: string(ca.RootsPEM()), MTLS: "strict"}
		for _, svc := range svcs {
			s.Upstreams = append(s.Upstreams, topology.Upstream{Service: svc, Protocol: "tcp"})
		}
		return s
	}
	if err := p.apply(snap("v1", "crystal")); err != nil {
		t.Fatal(err)
	}
	vip := meshdns.VIPs([]string{"crystal"})["crystal"]
	if meshdns.VIPs([]string{"a447", "crystal"})["a447"] != vip {
		t.Fatalf("a447 no longer collides with crystal at %s", vip)
	}
	if err := p.apply(snap("v2", "a447", "crystal")); err != nil {
		t.Fatal(err)
	}
	if svc := p.serviceAt(vip); svc != "crystal" {
		t.Errorf("%s, crystal's, maps to %q once a447 came", vip, svc)
	}
}

// The transparent egress maps an address to the upstream with an
// instance there only for instances dialed directly. One in another
// network, reached through its gateways, is at an address of that
// network, which may well be a local one too (overlapping private
// ranges are often why networks are not routed): counting it would make
// a local instance's address ambiguous, or send the app's connection to
// a local host into the mesh.
func TestTransparentAddrIndexSkipsOtherNetworks(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	p, err := New(Config{Service: "front", AppAddr: "127.0.0.1:1", Server: "127.0.0.1:1", Token: "t", StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	s := &topology.Snapshot{Version: "v1", Service: "front", TrustDomain: "trellis.local", RootsPEM: string(ca.RootsPEM()), MTLS: "strict",
		Upstreams: []topology.Upstream{
			{Service: "crystal", Protocol: "tcp", Endpoints: []topology.Endpoint{{Instance: "crystal-1", Address: "10.0.1.5", Port: 8443}}},
			{Service: "nodejs", Protocol: "tcp", Endpoints: []topology.Endpoint{
				{Instance: "nodejs-1", Address: "10.0.1.5", Port: 8443, Network: "b", Gateways: []string{"192.0.2.1:15443"}, SNI: topology.NetworkSNI("nodejs-1", "nodejs")},
				{Instance: "nodejs-2", Address: "10.0.1.6", Port: 8443, Network: "b", Gateways: []string{"192.0.2.1:15443"}, SNI: topology.NetworkSNI("nodejs-2", "nodejs")},
			}},
		}}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := p.apply(s); err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]string{"10.0.1.5": "crystal", "10.0.1.6": ""} {
		if got := p.serviceAt(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s maps to %q, want %q", addr, got, want)
		}
	}
}
