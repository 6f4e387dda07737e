package check

import (
	"strings"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// want is one expected finding: its severity, where, and a piece of
// what it says.
type want struct {
	sev   Severity
	where string
	what  string
}

// expect checks that got holds exactly the findings of ws (in order),
// ok findings aside when ws has none.
func expect(t *testing.T, got []Finding, ws []want) {
	t.Helper()
	var bad []Finding
	for _, f := range got {
		if f.Severity != OK {
			bad = append(bad, f)
		}
	}
	if len(bad) != len(ws) {
		t.Fatalf("got %d findings %+v, want %d %+v", len(bad), bad, len(ws), ws)
	}
	for i, w := range ws {
		f := bad[i]
		if f.Severity != w.sev || f.Where != w.where || !strings.Contains(f.What, w.what) {
			t.Errorf("finding %d: got %s %q %q, want %s %q containing %q", i, f.Severity, f.Where, f.What, w.sev, w.where, w.what)
		}
		if f.Fix == "" {
			t.Errorf("finding %d (%s): no fix", i, f.What)
		}
	}
	if len(ws) == 0 && Worst(got) != OK {
		t.Errorf("worst = %s, want ok", Worst(got))
	}
}

func svc(name string) v1.Resource {
	return v1.Resource{Kind: v1.KindService, Name: name, Service: &v1.ServiceSpec{Protocol: v1.ProtocolHTTP}}
}

func route(name string, targets ...v1.RouteTarget) v1.Resource {
	return v1.Resource{Kind: v1.KindRoute, Name: name, Route: &v1.RouteSpec{Rules: []v1.RouteRule{{Targets: targets}}}}
}

func intention(src, dst string) v1.Resource {
	return v1.Resource{Kind: v1.KindIntention, Name: src + "." + dst, Intention: &v1.IntentionSpec{Source: src, Destination: dst, Action: v1.Allow}}
}

func inst(id, service, version string, healthy bool) v1.Instance {
	return v1.Instance{ID: id, Service: service, Version: version, Address: "10.0.0.1", Port: 1, Healthy: healthy}
}

func TestRoutes(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    Mesh
		want []want
	}{
		{"every version healthy", Mesh{
			Resources: []v1.Resource{route("hello", v1.RouteTarget{Version: "v1", Weight: 90}, v1.RouteTarget{Version: "v2", Weight: 10})},
			Instances: []v1.Instance{inst("h1", "hello", "v1", true), inst("h2", "hello", "v2", true)},
		}, nil},
		{"version with no instance", Mesh{
			Resources: []v1.Resource{route("hello", v1.RouteTarget{Version: "v1", Weight: 75}, v1.RouteTarget{Version: "v3", Weight: 25})},
			Instances: []v1.Instance{inst("h1", "hello", "v1", true)},
		}, []want{{Error, "Route/hello", `rule-1 sends 25 % to version "v3" of hello, which has no instance`}}},
		{"version all unhealthy", Mesh{
			Resources: []v1.Resource{route("hello", v1.RouteTarget{Version: "v2", Weight: 1})},
			Instances: []v1.Instance{inst("h2", "hello", "v2", false), inst("h3", "hello", "v2", false)},
		}, []want{{Error, "Route/hello", "whose 2 instances are all unhealthy"}}},
		{"weight zero is fine", Mesh{
			Resources: []v1.Resource{route("hello", v1.RouteTarget{Version: "v1", Weight: 100}, v1.RouteTarget{Version: "gone", Weight: 0})},
			Instances: []v1.Instance{inst("h1", "hello", "v1", true)},
		}, nil},
		{"another service's version does not count", Mesh{
			Resources: []v1.Resource{route("hello", v1.RouteTarget{Version: "v1", Weight: 100})},
			Instances: []v1.Instance{inst("o1", "other", "v1", true)},
		}, []want{{Error, "Route/hello", "has no instance"}}},
	} {
		t.Run(tc.name, func(t *testing.T) { expect(t, Routes(tc.m), tc.want) })
	}
}

func TestIntentions(t *testing.T) {
	gw := v1.Resource{Kind: v1.KindGateway, Name: "edge", Gateway: &v1.GatewaySpec{}}
	for _, tc := range []struct {
		name string
		m    Mesh
		want []want
	}{
		{"declared and registered", Mesh{
			Resources: []v1.Resource{svc("web"), intention("client", "web")},
			Instances: []v1.Instance{inst("c1", "client", "", true)},
		}, nil},
		{"wildcard source and gateway source", Mesh{
			Resources: []v1.Resource{svc("web"), gw, intention("*", "web"), intention("edge", "web")},
		}, nil},
		{"unknown destination, with a suggestion", Mesh{
			Resources: []v1.Resource{svc("name"), intention("greeter", "nmae")},
			Instances: []v1.Instance{inst("g1", "greeter", "", true)},
		}, []want{{Warning, "Intention/greeter.nmae", `destination "nmae" is no service of the mesh (no Service resource, no instance) (did you mean "name"?)`}}},
		{"both unknown", Mesh{
			Resources: []v1.Resource{intention("a", "b")},
		}, []want{{Warning, "Intention/a.b", `source "a"`}, {Warning, "Intention/a.b", `destination "b"`}}},
	} {
		t.Run(tc.name, func(t *testing.T) { expect(t, Intentions(tc.m), tc.want) })
	}
}

func TestUpstreams(t *testing.T) {
	proxy := func(id, service string, paths ...v1.UpstreamPath) v1.ProxyStatus {
		return v1.ProxyStatus{Instance: id, Service: service, SentVersion: "1", AckedVersion: "1", Paths: paths}
	}
	for _, tc := range []struct {
		name string
		m    Mesh
		want []want
	}{
		{"reachable", Mesh{
			Proxies:   []v1.ProxyStatus{proxy("c1", "client", v1.UpstreamPath{Service: "web", Path: "direct"})},
			Instances: []v1.Instance{inst("w1", "web", "", true)},
		}, nil},
		{"unknown upstream", Mesh{
			Resources: []v1.Resource{svc("web")},
			Proxies:   []v1.ProxyStatus{proxy("c1", "client", v1.UpstreamPath{Service: "wbe", Path: "none"})},
		}, []want{{Error, "proxy c1", `upstream "wbe" is no service of the mesh (no Service resource, no instance): every call to it fails (did you mean "web"?)`}}},
		{"known upstream without endpoints", Mesh{
			Resources: []v1.Resource{svc("web")},
			Proxies:   []v1.ProxyStatus{proxy("c1", "client", v1.UpstreamPath{Service: "web", Path: "none", Unreachable: "network b: no healthy gateway"})},
		}, []want{{Error, "proxy c1", "upstream web has no healthy endpoint: every call to it fails (503) (network b: no healthy gateway)"}}},
	} {
		t.Run(tc.name, func(t *testing.T) { expect(t, Upstreams(tc.m), tc.want) })
	}
}

func TestGateways(t *testing.T) {
	gateway := func(ls ...v1.GatewayListener) v1.Resource {
		return v1.Resource{Kind: v1.KindGateway, Name: "edge", Gateway: &v1.GatewaySpec{Listeners: ls}}
	}
	pass := v1.GatewayListener{Port: 8443, Protocol: v1.GatewayTLSPassthrough, Targets: []v1.PassthroughTarget{{SNI: "a.example.com", Service: "site"}}}
	ingress := v1.GatewayListener{Port: 8080, Protocol: v1.GatewayHTTP, Routes: []v1.GatewayRoute{{PathPrefix: "/", Service: "web"}}}
	gwProxy := v1.ProxyStatus{Instance: "edge-1", Service: "edge", SentVersion: "1", AckedVersion: "1"}
	edged := func(i v1.Instance) v1.Instance { i.EdgePort = 9443; return i }
	for _, tc := range []struct {
		name string
		m    Mesh
		want []want
	}{
		{"healthy targets, served", Mesh{
			Resources: []v1.Resource{gateway(pass, ingress)},
			Instances: []v1.Instance{edged(inst("s1", "site", "", true)), inst("w1", "web", "", true)},
			Proxies:   []v1.ProxyStatus{gwProxy},
		}, nil},
		{"pass-through target without edge listener", Mesh{
			Resources: []v1.Resource{gateway(pass)},
			Instances: []v1.Instance{inst("s1", "site", "", true)},
			Proxies:   []v1.ProxyStatus{gwProxy},
		}, []want{{Error, "Gateway/edge", "listener tls-passthrough:8443: no instance of site has an edge listener"}}},
		{"pass-through target unhealthy", Mesh{
			Resources: []v1.Resource{gateway(pass)},
			Instances: []v1.Instance{edged(inst("s1", "site", "", false))},
			Proxies:   []v1.ProxyStatus{gwProxy},
		}, []want{{Error, "Gateway/edge", "none of the 1 targets of site is healthy"}}},
		{"ingress route to a service without instances", Mesh{
			Resources: []v1.Resource{gateway(ingress), svc("web")},
			Proxies:   []v1.ProxyStatus{gwProxy},
		}, []want{{Error, "Gateway/edge", "listener http:8080: web has no instance"}}},
		{"unknown service, no gateway process", Mesh{
			Resources: []v1.Resource{gateway(ingress)},
		}, []want{{Error, "Gateway/edge", `sends to "web", which is no service of the mesh`}, {Warning, "Gateway/edge", "no gateway process"}}},
	} {
		t.Run(tc.name, func(t *testing.T) { expect(t, Gateways(tc.m), tc.want) })
	}
}

func TestProxies(t *testing.T) {
	expired := now.Add(-time.Minute)
	for _, tc := range []struct {
		name   string
		m      Mesh
		behind map[string]time.Duration
		want   []want
	}{
		{"current", Mesh{
			Proxies:   []v1.ProxyStatus{{Instance: "w1", Service: "web", SentVersion: "7", AckedVersion: "7"}},
			Instances: []v1.Instance{inst("w1", "web", "", true)},
		}, nil, nil},
		{"rejected", Mesh{
			Proxies: []v1.ProxyStatus{{Instance: "w1", Service: "web", SentVersion: "8", AckedVersion: "7", Error: "upstream api: route bad regex"}},
		}, nil, []want{{Error, "proxy w1", "rejected snapshot 8: upstream api: route bad regex (it serves the last one it applied: 7)"}}},
		{"behind briefly", Mesh{
			Proxies: []v1.ProxyStatus{{Instance: "w1", Service: "web", SentVersion: "8", AckedVersion: "7"}},
		}, map[string]time.Duration{"w1": 3 * time.Second}, []want{{Warning, "proxy w1", "behind (status up to 5s old): sent 8, applied 7"}}},
		{"behind past the limit", Mesh{
			Proxies: []v1.ProxyStatus{{Instance: "w1", Service: "web", SentVersion: "8"}},
		}, map[string]time.Duration{"w1": 20 * time.Second}, []want{{Error, "proxy w1", "has not applied snapshot 8 for 20s (applied: none yet)"}}},
		{"expired certificate", Mesh{
			Proxies: []v1.ProxyStatus{{Instance: "w1", Service: "web", SentVersion: "1", AckedVersion: "1", SVIDExpiresAt: &expired}},
		}, nil, []want{{Error, "proxy w1", "its certificate expired"}}},
		{"instance without proxy", Mesh{
			Instances: []v1.Instance{inst("w9", "web", "", true)},
		}, nil, []want{{Warning, "instance w9", "no proxy is connected"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.m.Now = now
			expect(t, Proxies(tc.m, tc.behind, Limits{}), tc.want)
		})
	}
}

func TestCertificates(t *testing.T) {
	root := func(d time.Duration) v1.RootCert {
		return v1.RootCert{Fingerprint: "ab", Subject: "CN=root", NotAfter: now.Add(d)}
	}
	for _, tc := range []struct {
		name string
		m    Mesh
		want []want
	}{
		{"valid", Mesh{Roots: v1.Roots{Certs: []v1.RootCert{root(365 * 24 * time.Hour)}}}, nil},
		{"root expires soon", Mesh{Roots: v1.Roots{Certs: []v1.RootCert{root(10 * 24 * time.Hour)}}},
			[]want{{Warning, "root CN=root", "expires on 2026-06-11, in 10 days"}}},
		{"root expired", Mesh{Roots: v1.Roots{Certs: []v1.RootCert{root(-time.Hour)}}},
			[]want{{Error, "root CN=root", "root expired on 2026-06-01"}}},
		{"intermediate expires soon", Mesh{Roots: v1.Roots{Certs: []v1.RootCert{root(3650 * 24 * time.Hour)}},
			CAChain: []Cert{{Subject: "CN=issuing", NotAfter: now.Add(30 * time.Hour)}}},
			[]want{{Warning, "CA certificate CN=issuing", "in 30 hours"}}},
		{"no roots", Mesh{}, []want{{Error, "", "no root"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.m.Now = now
			expect(t, Certificates(tc.m, Limits{}), tc.want)
		})
	}
}

func TestRotation(t *testing.T) {
	until := now.Add(time.Hour)
	for _, tc := range []struct {
		name string
		r    v1.Rotation
		want []want
	}{
		{"none", v1.Rotation{}, nil},
		{"retired", v1.Rotation{Phase: v1.RotationRetired}, nil},
		{"prepared", v1.Rotation{Phase: v1.RotationPrepared, NewRoot: "0123456789abcdef0123", Proxies: 3, Trusting: 2, Waiting: []string{"web-1"}},
			[]want{{Warning, "root 0123456789abcdef", "2 of 3 proxies trust the new root; waiting for web-1"}}},
		{"active", v1.Rotation{Phase: v1.RotationActive, OldRoot: "fedcba9876543210ff", OldSVIDsUntil: &until},
			[]want{{Warning, "root fedcba9876543210", "the servers sign with the new key"}}},
	} {
		t.Run(tc.name, func(t *testing.T) { expect(t, Rotation(Mesh{Now: now, Rotation: tc.r}), tc.want) })
	}
}

func TestFilesAndContext(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []LocalFile
		want  []want
	}{
		{"private", []LocalFile{{Path: "/d/admin-token", Role: "admin token", Mode: 0o600, Secret: true}, {Path: "/h/context.json", Role: "context file", Mode: 0o600}}, nil},
		{"world-readable token", []LocalFile{{Path: "/d/admin-token", Role: "admin token", Mode: 0o644, Secret: true}},
			[]want{{Error, "/d/admin-token", "the admin token has mode 0644: other users can read the secret"}}},
		{"group-readable CA key", []LocalFile{{Path: "/d/ca-key.pem", Role: "CA key", Mode: 0o640, Secret: true}},
			[]want{{Error, "/d/ca-key.pem", "mode 0640"}}},
		{"readable context file", []LocalFile{{Path: "/h/context.json", Role: "context file", Mode: 0o644}},
			[]want{{Warning, "/h/context.json", "the context file has mode 0644"}}},
	} {
		t.Run(tc.name, func(t *testing.T) { expect(t, Files(tc.files), tc.want) })
	}
	t.Run("stale context", func(t *testing.T) {
		expect(t, Context(&ContextFile{Path: "/h/context.json", PID: 4242}), []want{{Warning, "/h/context.json", "pid 4242"}})
	})
	t.Run("live context", func(t *testing.T) {
		expect(t, Context(&ContextFile{Path: "/h/context.json", PID: 4242, Alive: true}), nil)
	})
	t.Run("no context", func(t *testing.T) { expect(t, Context(nil), nil) })
	t.Run("context without pid", func(t *testing.T) {
		got := Context(&ContextFile{Path: "/h/context.json"})
		expect(t, got, nil)
		if len(got) != 1 || strings.Contains(got[0].What, "pid") {
			t.Errorf("got %+v, want one ok finding naming no pid", got)
		}
	})
}

// Resources reports, for apply, what concerns the applied resources
// only, judged with the store's: the Service applied in the same batch
// counts, a stored route's problem is not repeated.
func TestResources(t *testing.T) {
	stored := Mesh{
		Resources: []v1.Resource{route("old", v1.RouteTarget{Version: "v9", Weight: 1})},
		Instances: []v1.Instance{inst("h1", "hello", "v1", true)},
	}
	applied := []v1.Resource{
		svc("api"),
		intention("hello", "api"),
		intention("hello", "apu"),
		route("hello", v1.RouteTarget{Version: "v1", Weight: 50}, v1.RouteTarget{Version: "v2", Weight: 50}),
	}
	expect(t, Resources(applied, stored), []want{
		{Error, "Route/hello", `version "v2" of hello, which has no instance`},
		{Warning, "Intention/hello.apu", `destination "apu" is no service of the mesh (no Service resource, no instance) (did you mean "api"?)`},
	})
}

func TestWorstAndCount(t *testing.T) {
	fs := []Finding{{Severity: OK}, {Severity: Warning}, {Severity: Error}, {Severity: Warning}}
	if got := Worst(fs); got != Error {
		t.Errorf("Worst = %s, want error", got)
	}
	if got := Worst(fs[:2]); got != Warning {
		t.Errorf("Worst = %s, want warning", got)
	}
	if got := Count(fs, Warning); got != 2 {
		t.Errorf("Count(warning) = %d, want 2", got)
	}
}
