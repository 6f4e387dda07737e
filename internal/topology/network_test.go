package topology

import (
	"net"
	"reflect"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// netMesh is a mesh with service "api" in networks a and b (one instance
// each, plus one in c), and network gateways as the test case sets them.
func netMesh(locality string, gateways map[string][]v1.Instance) *Mesh {
	m := &Mesh{
		TrustDomain: "trellis.local",
		RootsPEM:    "roots",
		Mesh:        &v1.MeshSpec{},
		Services:    map[string]*v1.ServiceSpec{"api": {Locality: locality}},
		Instances: map[string][]v1.Instance{
			"api": {
				{ID: "api-a", Service: "api", Address: "10.0.0.1", Port: 8443, Network: "", Healthy: true},
				{ID: "api-b", Service: "api", Address: "10.1.0.1", Port: 8443, Network: "b", Healthy: true},
				{ID: "api-c", Service: "api", Address: "10.2.0.1", Port: 8443, Network: "c", Healthy: true},
			},
		},
		Gateways: map[string]*v1.GatewaySpec{},
	}
	for name, ins := range gateways {
		net := strings.TrimPrefix(name, "gw-")
		m.Gateways[name] = &v1.GatewaySpec{Listeners: []v1.GatewayListener{{Port: 15443, Protocol: v1.GatewayNetwork, Network: net}}}
		m.Instances[name] = ins
	}
	return m
}

func TestComputeNetworks(t *testing.T) {
	gwB := func(healthy ...bool) []v1.Instance {
		var out []v1.Instance
		for i, h := range healthy {
			out = append(out, v1.Instance{ID: "gw-b-" + string(rune('1'+i)), Service: "gw-b", Address: "192.0.2." + string(rune('1'+i)), Port: 1, Network: "b", Healthy: h})
		}
		return out
	}
	type want struct {
		instance string
		gateways []string
	}
	tests := []struct {
		name        string
		network     string // the caller's
		locality    string
		gateways    map[string][]v1.Instance
		kill        string // an api instance made unhealthy
		want        []want
		unreachable string // a substring of Upstream.Unreachable; "" wants none
	}{
		{name: "local preferred", network: "default", gateways: map[string][]v1.Instance{"gw-b": gwB(true)},
			want: []want{{instance: "api-a"}}},
		{name: "empty network is default", network: "", gateways: map[string][]v1.Instance{"gw-b": gwB(true)},
			want: []want{{instance: "api-a"}}},
		{name: "remote through gateway when local is down", network: "default", kill: "api-a",
			gateways: map[string][]v1.Instance{"gw-b": gwB(true, true)},
			want:     []want{{instance: "api-b", gateways: []string{"192.0.2.1:15443", "192.0.2.2:15443"}}, {instance: "api-c"}}},
		{name: "peered networks are direct", network: "default", kill: "api-a",
			want: []want{{instance: "api-b"}, {instance: "api-c"}}},
		{name: "unhealthy gateway not listed", network: "default", kill: "api-a",
			gateways: map[string][]v1.Instance{"gw-b": gwB(false, true)},
			want:     []want{{instance: "api-b", gateways: []string{"192.0.2.2:15443"}}, {instance: "api-c"}}},
		{name: "all gateways down", network: "default", kill: "api-a",
			gateways:    map[string][]v1.Instance{"gw-b": gwB(false, false)},
			want:        []want{{instance: "api-c"}},
			unreachable: "network b: no healthy network gateway (declared: gw-b)"},
		{name: "all gateways down, local healthy", network: "default",
			gateways: map[string][]v1.Instance{"gw-b": gwB(false)},
			want:     []want{{instance: "api-a"}}},
		{name: "all gateways down, locality any", network: "default", locality: v1.LocalityAny,
			gateways:    map[string][]v1.Instance{"gw-b": gwB(false)},
			want:        []want{{instance: "api-a"}, {instance: "api-c"}},
			unreachable: "network b: no healthy network gateway"},
		{name: "declared gateway never started", network: "default", kill: "api-a",
			gateways:    map[string][]v1.Instance{"gw-b": nil},
			want:        []want{{instance: "api-c"}},
			unreachable: "network b: no healthy network gateway"},
		{name: "locality any", network: "default", locality: v1.LocalityAny,
			gateways: map[string][]v1.Instance{"gw-b": gwB(true)},
			want:     []want{{instance: "api-a"}, {instance: "api-b", gateways: []string{"192.0.2.1:15443"}}, {instance: "api-c"}}},
		{name: "caller in the gateway's network", network: "b", locality: v1.LocalityAny,
			gateways: map[string][]v1.Instance{"gw-b": gwB(true), "gw-default": {{ID: "gw-d", Address: "192.0.2.9", Healthy: true}}},
			want:     []want{{instance: "api-a", gateways: []string{"192.0.2.9:15443"}}, {instance: "api-b"}, {instance: "api-c"}}},
		{name: "gateway in another network than its listener", network: "default", kill: "api-a",
			gateways:    map[string][]v1.Instance{"gw-b": {{ID: "gw-x", Address: "192.0.2.7", Network: "c", Healthy: true}}},
			want:        []want{{instance: "api-c"}},
			unreachable: "network b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := netMesh(tt.locality, tt.gateways)
			for i := range m.Instances["api"] {
				if m.Instances["api"][i].ID == tt.kill {
					m.Instances["api"][i].Healthy = false
				}
			}
			s := Compute(m, Proxy{Service: "web", Upstreams: []string{"api"}, Network: tt.network})
			if err := s.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			u := s.Upstream("api")
			var got []want
			for _, e := range u.Endpoints {
				got = append(got, want{instance: e.Instance, gateways: e.Gateways})
				if len(e.Gateways) > 0 && e.SNI != NetworkSNI(e.Instance, "api") {
					t.Errorf("endpoint %s: sni %q, want %q", e.Instance, e.SNI, NetworkSNI(e.Instance, "api"))
				}
				if len(e.Gateways) == 0 && e.SNI != "" {
					t.Errorf("direct endpoint %s has sni %q", e.Instance, e.SNI)
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("endpoints = %+v, want %+v", got, tt.want)
			}
			if tt.unreachable == "" && u.Unreachable != "" || !strings.Contains(u.Unreachable, tt.unreachable) {
				t.Errorf("unreachable = %q, want %q", u.Unreachable, tt.unreachable)
			}
			if s.NetworkTargets != nil {
				t.Errorf("a sidecar got network targets %v", s.NetworkTargets)
			}
		})
	}
}

func TestComputeNetworkTargets(t *testing.T) {
	m := netMesh("", map[string][]v1.Instance{"gw-b": {{ID: "gw-b-1", Address: "192.0.2.1", Network: "b", Healthy: true}}})
	m.Instances["api"] = append(m.Instances["api"], v1.Instance{ID: "api-b.2", Service: "api", Address: "10.1.0.2", Port: 9, Network: "b", Healthy: true},
		v1.Instance{ID: "api-b3", Service: "api", Address: "10.1.0.3", Port: 9, Network: "b", Healthy: false})
	s := Compute(m, Proxy{Service: "gw-b", Network: "b"})
	want := map[string]string{
		"api-b.api.trellis.internal": "10.1.0.1:8443",
		NetworkSNI("api-b.2", "api"): "10.1.0.2:9",
	}
	if !reflect.DeepEqual(s.NetworkTargets, want) {
		t.Errorf("network targets = %v, want %v", s.NetworkTargets, want)
	}
	if err := s.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	s.NetworkTargets["evil.example.com"] = "10.0.0.1"
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "evil.example.com") {
		t.Errorf("Validate of a bad network target: %v", err)
	}
	// A gateway process started in another network gets none: it must
	// not forward into a network it is not in.
	if s := Compute(m, Proxy{Service: "gw-b", Network: "c"}); len(s.NetworkTargets) != 0 {
		t.Errorf("gateway in network c: targets %v, want none", s.NetworkTargets)
	}
}

func TestNetworkSNI(t *testing.T) {
	tests := []struct{ instance, want string }{
		{"api-1", "api-1.api.trellis.internal"},
		{"api-1.x", NetworkSNI("api-1.x", "api")},
		{"-api", NetworkSNI("-api", "api")},
		{strings.Repeat("a", 64), NetworkSNI(strings.Repeat("a", 64), "api")},
	}
	for _, tt := range tests {
		got := NetworkSNI(tt.instance, "api")
		if got != tt.want {
			t.Errorf("NetworkSNI(%q) = %q, want %q", tt.instance, got, tt.want)
		}
		for _, label := range strings.Split(got, ".") {
			if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' || strings.ContainsAny(label, "_.") {
				t.Errorf("NetworkSNI(%q) = %q: label %q is not a DNS label", tt.instance, got, label)
			}
		}
	}
	if a, b := NetworkSNI("api-1.x", "api"), NetworkSNI("api-1_x", "api"); a == b {
		t.Errorf("two instances share the name %q", a)
	}
}

func FuzzParseNetworkSNI(f *testing.F) {
	for _, s := range []string{"api-1.api.trellis.internal", NetworkSNI("a.b_c", "web"), "x.trellis.internal", ".api.trellis.internal", "a.b.c.trellis.internal", "api.Web.trellis.internal", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sni string) {
		inst, svc, ok := ParseNetworkSNI(sni)
		if !ok {
			return
		}
		if got := inst + "." + svc + "." + SNISuffix; got != sni {
			t.Fatalf("ParseNetworkSNI(%q) = %q, %q: rebuilt %q", sni, inst, svc, got)
		}
		if NetworkSNI(inst, svc) == sni && instanceLabel(inst) != inst {
			t.Fatalf("instance label %q does not round-trip", inst)
		}
	})
}

// A proxy refuses a snapshot whose network paths it cannot trust: a
// gateway that is not an IP and port, an SNI that does not name the
// endpoint it is given for (the gateway would route the stream to
// another instance or service), a network target that is not an IP and
// port.
func TestValidateNetworkPaths(t *testing.T) {
	m := netMesh(v1.LocalityAny, map[string][]v1.Instance{"gw-b": {{ID: "gw-b-1", Address: "192.0.2.1", Network: "b", Healthy: true}}})
	good := func() *Snapshot {
		s := Compute(m, Proxy{Service: "web", Upstreams: []string{"api"}})
		if err := s.Validate(); err != nil {
			t.Fatalf("Validate: %v", err)
		}
		return s
	}
	viaB := func(s *Snapshot) *Endpoint {
		for i, e := range s.Upstreams[0].Endpoints {
			if len(e.Gateways) > 0 {
				return &s.Upstreams[0].Endpoints[i]
			}
		}
		t.Fatal("no endpoint through a gateway")
		return nil
	}
	for _, tc := range []struct {
		name, want string
		edit       func(s *Snapshot)
	}{
		{"gateway a host name", "gateway", func(s *Snapshot) { viaB(s).Gateways = []string{"gw.example.com:15443"} }},
		{"gateway port 0", "gateway", func(s *Snapshot) { viaB(s).Gateways = []string{"192.0.2.1:0"} }},
		{"gateway port too big", "gateway", func(s *Snapshot) { viaB(s).Gateways = []string{"192.0.2.1:70000"} }},
		{"sni of another service", "sni", func(s *Snapshot) { viaB(s).SNI = NetworkSNI("api-b", "web") }},
		{"sni of another instance", "sni", func(s *Snapshot) { viaB(s).SNI = NetworkSNI("api-c", "api") }},
		{"sni not a network name", "sni", func(s *Snapshot) { viaB(s).SNI = "api.example.com" }},
		{"network target a host name", "networkTargets", func(s *Snapshot) {
			s.NetworkTargets = map[string]string{NetworkSNI("api-b", "api"): "api.example.com:8443"}
		}},
		{"network target port 0", "networkTargets", func(s *Snapshot) {
			s.NetworkTargets = map[string]string{NetworkSNI("api-b", "api"): "10.1.0.1:0"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := good()
			tc.edit(s)
			if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate: %v, want an error naming %s", err, tc.want)
			}
		})
	}
}

// An instance's address is what its own sidecar registered: a token
// holder can name any. The network gateway forwards raw TCP there from
// other networks, so the registry's word is not enough: addresses no
// sidecar serves at (link-local such as the cloud metadata endpoint,
// unspecified, multicast), the gateway's own listeners (a loop: each
// connection would open another), and loopback when the gateway is not
// itself on loopback (its host's admin and local services) are no
// targets; a proxy refuses a snapshot that has them.
func TestNetworkTargetsRefuseWhatNoSidecarServes(t *testing.T) {
	m := netMesh("", map[string][]v1.Instance{"gw-b": {{ID: "gw-b-1", Address: "192.0.2.1", Network: "b", Healthy: true}}})
	for i, addr := range []string{"169.254.169.254:80", "192.0.2.1:15443", "127.0.0.1:6379", "0.0.0.0:8443", "224.0.0.1:8443", "[fe80::1]:8443", "[::1]:8443"} {
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		m.Instances["evil"] = append(m.Instances["evil"], v1.Instance{ID: "evil-" + strconv.Itoa(i), Service: "evil", Address: host, Port: p, Network: "b", Healthy: true})
	}
	s := Compute(m, Proxy{Service: "gw-b", Network: "b"})
	want := map[string]string{NetworkSNI("api-b", "api"): "10.1.0.1:8443"}
	if !reflect.DeepEqual(s.NetworkTargets, want) {
		t.Errorf("network targets = %v, want %v", s.NetworkTargets, want)
	}
	for _, addr := range []string{"169.254.169.254:80", "0.0.0.0:8443", "224.0.0.1:8443"} {
		s.NetworkTargets = map[string]string{NetworkSNI("evil-0", "evil"): addr}
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "networkTargets") {
			t.Errorf("Validate of network target %s: %v", addr, err)
		}
	}

	// A gateway on loopback (trellis up, tests) reaches instances on
	// loopback; still not itself.
	lo := netMesh("", map[string][]v1.Instance{"gw-b": {{ID: "gw-b-1", Address: "127.0.0.4", Network: "b", Healthy: true}}})
	lo.Instances["api"] = []v1.Instance{
		{ID: "api-b", Service: "api", Address: "127.0.0.3", Port: 8443, Network: "b", Healthy: true},
		{ID: "api-loop", Service: "api", Address: "127.0.0.4", Port: 15443, Network: "b", Healthy: true},
	}
	s = Compute(lo, Proxy{Service: "gw-b", Network: "b"})
	want = map[string]string{NetworkSNI("api-b", "api"): "127.0.0.3:8443"}
	if !reflect.DeepEqual(s.NetworkTargets, want) {
		t.Errorf("loopback gateway: network targets = %v, want %v", s.NetworkTargets, want)
	}
}
