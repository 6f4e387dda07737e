package topology

import (
	"strings"
	"testing"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

func TestCompute(t *testing.T) {
	m := &Mesh{
		TrustDomain: "trellis.local",
		RootsPEM:    "roots",
		Mesh:        &v1.MeshSpec{DefaultPolicy: v1.Deny},
		Services:    map[string]*v1.ServiceSpec{"name": {Protocol: "http"}},
		Intentions:  []v1.IntentionSpec{{Source: "greeter", Destination: "name", Action: v1.Allow}},
		Instances: map[string][]v1.Instance{
			"name": {
				{ID: "name-2", Service: "name", Address: "127.0.0.1", Port: 2, Healthy: true},
				{ID: "name-1", Service: "name", Address: "127.0.0.1", Port: 1, Healthy: true},
				{ID: "name-3", Service: "name", Address: "127.0.0.1", Port: 3, Healthy: false},
			},
		},
	}
	s := Compute(m, Proxy{Service: "greeter", Upstreams: []string{"name", "greeting", "name"}})
	if err := s.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if len(s.Upstreams) != 2 {
		t.Fatalf("upstreams = %+v, want greeting and name once each", s.Upstreams)
	}
	name := s.Upstream("name")
	if name == nil || name.Protocol != "http" {
		t.Fatalf("upstream name = %+v, want protocol http", name)
	}
	if len(name.Endpoints) != 2 || name.Endpoints[0].Instance != "name-1" {
		t.Errorf("endpoints = %+v, want healthy name-1, name-2 in order", name.Endpoints)
	}
	if g := s.Upstream("greeting"); g == nil || g.Protocol != "tcp" || len(g.Endpoints) != 0 {
		t.Errorf("upstream greeting = %+v, want tcp with no endpoints", g)
	}
	if s.Inbound.DefaultAllow {
		t.Error("inbound default allows under a deny mesh")
	}

	// The version follows the content, and only the content.
	again := Compute(m, Proxy{Service: "greeter", Upstreams: []string{"greeting", "name"}})
	if again.Version != s.Version {
		t.Errorf("same content, versions %s and %s", s.Version, again.Version)
	}
	m.Instances["name"][2].Healthy = true
	if changed := Compute(m, Proxy{Service: "greeter", Upstreams: []string{"name", "greeting"}}); changed.Version == s.Version {
		t.Error("a newly healthy endpoint did not change the version")
	}
}

func TestComputeDNSNames(t *testing.T) {
	m := &Mesh{
		TrustDomain: "trellis.local",
		RootsPEM:    "roots",
		Mesh:        &v1.MeshSpec{DNS: &v1.MeshDNS{Domains: []string{"Demo.Local", "appmeshworkshop.hosted.local"}}},
		Services: map[string]*v1.ServiceSpec{
			"crystal": {Port: 3000, Hostnames: []string{"Crystal.Legacy.Example"}},
			"nodejs":  {Hostnames: []string{"node.other.example"}},
		},
	}
	s := Compute(m, Proxy{Service: "frontend", Upstreams: []string{"crystal"}})
	if got, want := strings.Join(s.DNSDomains, " "), "appmeshworkshop.hosted.local demo.local"; got != want {
		t.Errorf("dnsDomains = %s, want %s", got, want)
	}
	if got, want := strings.Join(s.DNSHostnames, " "), "crystal.legacy.example node.other.example"; got != want {
		t.Errorf("dnsHostnames = %s, want %s", got, want)
	}
	u := s.Upstream("crystal")
	if got, want := strings.Join(u.Hostnames, " "), "crystal.appmeshworkshop.hosted.local crystal.demo.local crystal.legacy.example"; got != want {
		t.Errorf("hostnames = %s, want %s", got, want)
	}
	if u.Port != 3000 {
		t.Errorf("port = %d, want the Service's 3000", u.Port)
	}
	if none := Compute(&Mesh{TrustDomain: "t", RootsPEM: "r"}, Proxy{Service: "a", Upstreams: []string{"b"}}); none.DNSDomains != nil || none.Upstreams[0].Hostnames != nil {
		t.Errorf("a mesh without DNS gave names: %v %v", none.DNSDomains, none.Upstreams[0].Hostnames)
	}
}
