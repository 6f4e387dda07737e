package control

import (
	"strings"
	"testing"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/topology"
)

func TestHostnameClaimsOneServiceEach(t *testing.T) {
	stored := &topology.Mesh{
		Mesh: &v1.MeshSpec{DNS: &v1.MeshDNS{Domains: []string{"demo.local"}}},
		Services: map[string]*v1.ServiceSpec{
			"crystal": {Hostnames: []string{"crystal.hosted.local"}},
			"nodejs":  {},
			"legacy":  {Hostnames: []string{"nodejs.hosted.local"}},
		},
	}
	svc := func(name string, hosts ...string) v1.Resource {
		return v1.Resource{Kind: v1.KindService, Name: name, Service: &v1.ServiceSpec{Hostnames: hosts}}
	}
	for _, tc := range []struct {
		name  string
		batch []v1.Resource
		bad   string // part of the error, "" for none
	}{
		{"a new name", []v1.Resource{svc("bank", "bank.hosted.local")}, ""},
		{"crystal keeps its own", []v1.Resource{svc("crystal", "crystal.hosted.local", "c.hosted.local")}, ""},
		{"another's hostname", []v1.Resource{svc("evil", "Crystal.Hosted.Local")}, `"crystal.hosted.local" of`},
		{"another's mesh name", []v1.Resource{svc("evil", "nodejs.demo.local")}, `"nodejs.demo.local"`},
		{"two in one batch", []v1.Resource{svc("a", "x.hosted.local"), svc("b", "x.hosted.local")}, `"x.hosted.local"`},
		{"a name moved in one batch", []v1.Resource{svc("crystal"), svc("bank", "crystal.hosted.local")}, ""},
		{"a new domain makes a clash", []v1.Resource{
			{Kind: v1.KindMesh, Name: v1.MeshName, Mesh: &v1.MeshSpec{DNS: &v1.MeshDNS{Domains: []string{"hosted.local"}}}},
		}, `"nodejs.hosted.local"`},
	} {
		errs := checkHostnameClaims(stored, tc.batch)
		got := strings.Join(errs, "; ")
		if (tc.bad == "") != (got == "") || !strings.Contains(got, tc.bad) {
			t.Errorf("%s: errors %q, want one with %q", tc.name, got, tc.bad)
		}
	}
}
