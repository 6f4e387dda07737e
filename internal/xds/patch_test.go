package xds

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/anypb"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/topology"
)

func patchMesh() *topology.Mesh {
	return &topology.Mesh{
		TrustDomain: "trellis.local", RootsPEM: "roots", Mesh: &v1.MeshSpec{},
		Services: map[string]*v1.ServiceSpec{"db": {Protocol: "tcp"}, "cache": {Protocol: "tcp"}, "api": {Protocol: "http"}},
		Instances: map[string][]v1.Instance{
			"db":    {{ID: "db-1", Service: "db", Address: "10.0.0.1", Port: 20000, Healthy: true}},
			"cache": {{ID: "cache-1", Service: "cache", Address: "10.0.0.2", Port: 20000, Healthy: true}},
		},
	}
}

// Each kind of change travels as a patch that turns the old snapshot
// into exactly the new one.
func TestPatchRoundTrip(t *testing.T) {
	view := topology.Proxy{Service: "web", Upstreams: []string{"cache", "db"}}
	tests := map[string]struct {
		change func(*topology.Mesh, *topology.Proxy)
		// whole: the patch would carry every upstream anyway.
		whole bool
	}{
		"endpoint added": {change: func(m *topology.Mesh, _ *topology.Proxy) {
			m.Instances["db"] = append(m.Instances["db"], v1.Instance{ID: "db-2", Service: "db", Address: "10.0.0.3", Port: 20000, Healthy: true})
		}},
		"route set": {change: func(m *topology.Mesh, p *topology.Proxy) {
			p.Upstreams = append(p.Upstreams, "api")
			m.Routes = map[string]*v1.RouteSpec{"api": {}}
		}},
		"intention (base)": {change: func(m *topology.Mesh, _ *topology.Proxy) {
			m.Intentions = []v1.IntentionSpec{{Source: "db", Destination: "web", Action: v1.Allow}}
		}},
		"upstream removed": {change: func(_ *topology.Mesh, p *topology.Proxy) { p.Upstreams = []string{"db"} }},
		"every upstream":   {change: func(m *topology.Mesh, _ *topology.Proxy) { m.Instances = nil }},
		"everything": {change: func(m *topology.Mesh, _ *topology.Proxy) {
			m.Instances = nil
			m.Intentions = []v1.IntentionSpec{{Source: "db", Destination: "web", Action: v1.Allow}}
		}, whole: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, p := patchMesh(), view
			p.Upstreams = append([]string(nil), view.Upstreams...)
			from, fromRes := topology.ComputeSplit(m, p)
			tc.change(m, &p)
			to, toRes := topology.ComputeSplit(m, p)
			patch, ok := PatchResource(fromRes, toRes)
			if ok == tc.whole {
				t.Fatalf("patch made: %v, want %v", ok, !tc.whole)
			}
			if !ok {
				return
			}
			if len(patch.Value) >= len(toRes.Full()) {
				t.Errorf("patch is %d bytes, the whole snapshot %d", len(patch.Value), len(toRes.Full()))
			}
			got, err := Decode(Respond(to.Version, "1", patch), from)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got.Version != to.Version {
				t.Errorf("patched version %s, want %s", got.Version, to.Version)
			}
			if got, want := string(mustSplit(t, got).Full()), string(toRes.Full()); got != want {
				t.Errorf("patched snapshot\n%s\nwant\n%s", got, want)
			}
		})
	}
}

func mustSplit(t *testing.T, s *topology.Snapshot) *topology.Resources {
	t.Helper()
	r, err := topology.Split(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A patch that does not turn the proxy's snapshot into the announced one
// is refused with the reason, and the current snapshot is untouched.
func TestPatchRejects(t *testing.T) {
	m := patchMesh()
	view := topology.Proxy{Service: "web", Upstreams: []string{"cache", "db"}}
	cur, curRes := topology.ComputeSplit(m, view)
	m.Instances["db"][0].Port = 20001
	next, nextRes := topology.ComputeSplit(m, view)
	good, _ := PatchResource(curRes, nextRes)
	curWhole := string(curRes.Full())
	tests := map[string]struct {
		value   string
		version string
		cur     *topology.Snapshot
		want    string
	}{
		"no current snapshot": {string(good.Value), next.Version, nil, "no snapshot to patch"},
		"other base version":  {strings.Replace(string(good.Value), cur.Version, "0000000000000000", 1), next.Version, cur, "the current version is"},
		"content differs":     {strings.Replace(string(good.Value), "20001", "20002", 1), next.Version, cur, "content has version"},
		"response version":    {string(good.Value), "ffffffffffffffff", cur, "differs from response version"},
		"unknown field":       {`{"from":"` + cur.Version + `","version":"x","extra":1}`, "x", cur, "unknown field"},
		"removes unknown":     {`{"from":"` + cur.Version + `","version":"x","removed":["nope"]}`, "x", cur, "does not have"},
		"bad upstream name":   {`{"from":"` + cur.Version + `","version":"x","upstreams":[{"service":"No"}]}`, "x", cur, "upstreams[0]: service"},
		"upstream twice": {`{"from":"` + cur.Version + `","version":"x","upstreams":[{"service":"db","endpoints":[]},{"service":"db","endpoints":[]}]}`,
			"x", cur, "given twice"},
		"trailing data": {string(good.Value) + "{}", next.Version, cur, "data after"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			resp := Respond(tc.version, "1", &anypb.Any{TypeUrl: PatchType, Value: []byte(tc.value)})
			_, err := Decode(resp, tc.cur)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got error %v, want one saying %q", err, tc.want)
			}
			if got := string(mustSplit(t, cur).Full()); got != curWhole {
				t.Errorf("current snapshot changed")
			}
		})
	}
}

// FuzzDecodePatch: a patch is untrusted input to the proxy; whatever it
// holds, Decode returns a valid snapshot whose content has the response's
// version, or an error.
func FuzzDecodePatch(f *testing.F) {
	m := patchMesh()
	view := topology.Proxy{Service: "web", Upstreams: []string{"cache", "db"}}
	cur, curRes := topology.ComputeSplit(m, view)
	m.Instances["db"] = append(m.Instances["db"], v1.Instance{ID: "db-2", Service: "db", Address: "10.0.0.3", Port: 20000, Healthy: true})
	next, nextRes := topology.ComputeSplit(m, view)
	good, _ := PatchResource(curRes, nextRes)
	f.Add(good.Value, next.Version)
	f.Add([]byte(`{"from":"`+cur.Version+`","version":"x","removed":["db"]}`), "x")
	f.Add([]byte(`{"from":"`+cur.Version+`","version":"x","base":{"service":"web"}}`), "x")
	f.Add([]byte(`{}`), "")
	f.Fuzz(func(t *testing.T, value []byte, version string) {
		s, err := Decode(Respond(version, "1", &anypb.Any{TypeUrl: PatchType, Value: value}), cur)
		if err != nil {
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("accepted an invalid snapshot: %v", err)
		}
		if r := mustSplit(t, s); r.Version != version || s.Version != version {
			t.Fatalf("accepted snapshot of content version %s as %s", r.Version, version)
		}
	})
}
