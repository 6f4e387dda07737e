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
