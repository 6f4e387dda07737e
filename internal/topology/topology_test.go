package topology

import (
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
