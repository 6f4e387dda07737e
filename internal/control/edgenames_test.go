package control

import (
	"strings"
	"testing"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/topology"
)

func TestEdgeNames(t *testing.T) {
	m := &topology.Mesh{
		Services: map[string]*v1.ServiceSpec{
			"shop":  {DNSNames: []string{"shop.example.test", "*.api.example.test"}},
			"front": {DNSNames: []string{"front.example.test"}},
		},
		Gateways: map[string]*v1.GatewaySpec{"front": {Listeners: []v1.GatewayListener{
			{Port: 443, Protocol: v1.GatewayHTTPS, TLS: &v1.GatewayTLS{Source: v1.CertMesh, DNSNames: []string{"www.example.test"}}},
			{Port: 8443, Protocol: v1.GatewayHTTPS, TLS: &v1.GatewayTLS{DNSNames: []string{"selfsigned.example.test"}}},
		}}},
	}
	for _, tc := range []struct {
		service string
		names   []string
		bad     string // the name refused, "" for none
	}{
		{"shop", []string{"shop.example.test"}, ""},
		{"shop", []string{"SHOP.example.test"}, ""},
		{"shop", []string{"v1.api.example.test"}, ""},
		{"shop", []string{"*.api.example.test"}, ""},
		{"shop", []string{"a.b.api.example.test"}, "a.b.api.example.test"}, // one label only
		{"shop", []string{"api.example.test"}, "api.example.test"},         // the wildcard's parent
		{"shop", []string{"*.example.test"}, "*.example.test"},             // a wider wildcard
		{"shop", []string{"shop.example.test", "bank.example.com"}, "bank.example.com"},
		{"shop", []string{"www.example.test"}, "www.example.test"}, // front's, not shop's
		{"front", []string{"www.example.test", "front.example.test"}, ""},
		{"front", []string{"selfsigned.example.test"}, "selfsigned.example.test"}, // not a mesh listener
		{"nobody", []string{"nobody.example.test"}, "nobody.example.test"},
	} {
		err := checkEdgeNames(allowedEdgeNames(m, tc.service), tc.names, tc.service)
		switch {
		case tc.bad == "" && err != nil:
			t.Errorf("%s %v: %v", tc.service, tc.names, err)
		case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), `"`+tc.bad+`" is not allowed`)):
			t.Errorf("%s %v: %v, want %s refused", tc.service, tc.names, err, tc.bad)
		}
	}
}

func TestEdgeClaimsOneServiceEach(t *testing.T) {
	stored := &topology.Mesh{
		Services: map[string]*v1.ServiceSpec{"shop": {DNSNames: []string{"shop.example.test"}}},
		Gateways: map[string]*v1.GatewaySpec{"front": {Listeners: []v1.GatewayListener{
			{Port: 443, Protocol: v1.GatewayHTTPS, TLS: &v1.GatewayTLS{Source: v1.CertMesh, DNSNames: []string{"www.example.test"}}},
		}}},
	}
	svc := func(name string, names ...string) v1.Resource {
		return v1.Resource{Kind: v1.KindService, Name: name, Service: &v1.ServiceSpec{DNSNames: names}}
	}
	for _, tc := range []struct {
		name  string
		batch []v1.Resource
		bad   string // part of the error, "" for none
	}{
		{"a new name", []v1.Resource{svc("bank", "bank.example.test")}, ""},
		{"shop keeps its own", []v1.Resource{svc("shop", "shop.example.test", "shop2.example.test")}, ""},
		{"another's name", []v1.Resource{svc("evil", "SHOP.example.test")}, `"shop.example.test" of shop`},
		{"a gateway's name", []v1.Resource{svc("evil", "www.example.test")}, "of front"},
		{"a wildcard over another's", []v1.Resource{svc("evil", "*.example.test")}, "overlaps"},
		{"two in one batch", []v1.Resource{svc("a", "x.example.test"), svc("b", "x.example.test")}, "overlaps"},
		{"a name moved in one batch", []v1.Resource{svc("shop"), svc("bank", "shop.example.test")}, ""},
	} {
		errs := checkEdgeClaims(stored, tc.batch)
		got := strings.Join(errs, "; ")
		if (tc.bad == "") != (got == "") || !strings.Contains(got, tc.bad) {
			t.Errorf("%s: errors %q, want one with %q", tc.name, got, tc.bad)
		}
	}
}

func TestEdgeNamesUnderPublicSuffixes(t *testing.T) {
	for _, tc := range []struct {
		name string
		bad  bool
	}{
		{"*.example.com", false},
		{"shop.example.co.uk", false},
		{"*.shop.github.io", false},
		{"web", false},
		{"*.co.uk", true},
		{"*.github.io", true},
		{"*.internal", true},
		{"co.uk", true},
		{"com", true},
	} {
		if err := checkPublicSuffix(tc.name); (err != nil) != tc.bad {
			t.Errorf("%q: err = %v, want refused=%v", tc.name, err, tc.bad)
		}
	}
	errs := checkEdgeSuffixes([]v1.Resource{{Kind: v1.KindService, Name: "evil", Service: &v1.ServiceSpec{DNSNames: []string{"ok.example.test", "*.co.uk"}}}})
	if len(errs) != 1 || !strings.Contains(errs[0], "*.co.uk") {
		t.Errorf("apply check: %q", errs)
	}
}
