package v1

import (
	"strings"
	"testing"
)

func TestMeshDNSNamesValidated(t *testing.T) {
	for _, tc := range []struct {
		name, field string
		res         Resource
	}{
		{"trailing dot", "spec.dns.domains[0]", Resource{Kind: KindMesh, Name: MeshName, Mesh: &MeshSpec{DNS: &MeshDNS{Domains: []string{"demo.local."}}}}},
		{"ip domain", "spec.dns.domains[0]", Resource{Kind: KindMesh, Name: MeshName, Mesh: &MeshSpec{DNS: &MeshDNS{Domains: []string{"10.0.0.1"}}}}},
		{"numeric tld", "spec.dns.domains[1]", Resource{Kind: KindMesh, Name: MeshName, Mesh: &MeshSpec{DNS: &MeshDNS{Domains: []string{"demo.local", "10.1"}}}}},
		{"localhost", "spec.dns.domains[0]", Resource{Kind: KindMesh, Name: MeshName, Mesh: &MeshSpec{DNS: &MeshDNS{Domains: []string{"localhost"}}}}},
		{"under localhost", "spec.dns.domains[0]", Resource{Kind: KindMesh, Name: MeshName, Mesh: &MeshSpec{DNS: &MeshDNS{Domains: []string{"mesh.localhost"}}}}},
		{"twice in other case", "spec.dns.domains[1]", Resource{Kind: KindMesh, Name: MeshName, Mesh: &MeshSpec{DNS: &MeshDNS{Domains: []string{"demo.local", "Demo.Local"}}}}},
		{"too many", "spec.dns.domains", Resource{Kind: KindMesh, Name: MeshName, Mesh: &MeshSpec{DNS: &MeshDNS{Domains: manyNames(17)}}}},
		{"wildcard hostname", "spec.hostnames[0]", Resource{Kind: KindService, Name: "crystal", Service: &ServiceSpec{Hostnames: []string{"*.hosted.local"}}}},
		{"long label", "spec.hostnames[0]", Resource{Kind: KindService, Name: "crystal", Service: &ServiceSpec{Hostnames: []string{strings.Repeat("a", 64) + ".local"}}}},
		{"long name", "spec.hostnames[0]", Resource{Kind: KindService, Name: "crystal", Service: &ServiceSpec{Hostnames: []string{strings.Repeat("abcdefgh.", 29) + "local"}}}},
		{"underscore", "spec.hostnames[0]", Resource{Kind: KindService, Name: "crystal", Service: &ServiceSpec{Hostnames: []string{"a_b.local"}}}},
		{"empty label", "spec.hostnames[0]", Resource{Kind: KindService, Name: "crystal", Service: &ServiceSpec{Hostnames: []string{"a..local"}}}},
		{"ipv6", "spec.hostnames[0]", Resource{Kind: KindService, Name: "crystal", Service: &ServiceSpec{Hostnames: []string{"::1"}}}},
		{"hyphen", "spec.hostnames[0]", Resource{Kind: KindService, Name: "crystal", Service: &ServiceSpec{Hostnames: []string{"-a.local"}}}},
		{"ip6-localhost", "spec.hostnames[0]", Resource{Kind: KindService, Name: "crystal", Service: &ServiceSpec{Hostnames: []string{"ip6-localhost"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.res.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.field+": ") {
				t.Errorf("got %v, want an error at %s", err, tc.field)
			}
		})
	}
	ok := []Resource{
		{Kind: KindMesh, Name: MeshName, Mesh: &MeshSpec{DNS: &MeshDNS{Domains: []string{"demo.local", "AppMeshWorkshop.hosted.local", "internal"}}}},
		{Kind: KindService, Name: "crystal", Service: &ServiceSpec{Hostnames: []string{"crystal.appmeshworkshop.hosted.local", "x-1.example"}}},
	}
	for _, r := range ok {
		if err := r.Validate(); err != nil {
			t.Errorf("%s: %v", r.Kind, err)
		}
	}
}

func manyNames(n int) []string {
	var out []string
	for i := range n {
		out = append(out, strings.Repeat("a", i+1)+".local")
	}
	return out
}

func TestMeshNames(t *testing.T) {
	got := MeshNames(&MeshSpec{DNS: &MeshDNS{Domains: []string{"Demo.Local", "b.test"}}}, "web", &ServiceSpec{Hostnames: []string{"WWW.Example.test"}})
	want := "web.demo.local web.b.test www.example.test"
	if strings.Join(got, " ") != want {
		t.Errorf("got %v, want %s", got, want)
	}
	if got := MeshNames(nil, "web", nil); len(got) != 0 {
		t.Errorf("no DNS: got %v", got)
	}
}
