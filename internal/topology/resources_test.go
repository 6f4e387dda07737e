package topology

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// The whole snapshot built from the resources decodes to the snapshot;
// the base carries neither version nor upstreams; a change to one
// upstream changes that resource's hash and the version, and no other.
func TestSplitResources(t *testing.T) {
	m := &Mesh{
		TrustDomain: "trellis.local", RootsPEM: "roots", Mesh: &v1.MeshSpec{DNS: &v1.MeshDNS{Domains: []string{"mesh"}}},
		Services:   map[string]*v1.ServiceSpec{"db": {Protocol: "tcp"}, "api": {Protocol: "http"}},
		Intentions: []v1.IntentionSpec{{Source: "web", Destination: "web", Action: v1.Allow}},
		Instances:  map[string][]v1.Instance{"db": {{ID: "db-1", Service: "db", Address: "10.0.0.1", Port: 20000, Healthy: true}}},
	}
	p := Proxy{Service: "web", Upstreams: []string{"db", "api"}}
	s, r := ComputeSplit(m, p)
	var back Snapshot
	if err := json.Unmarshal(r.Full(), &back); err != nil {
		t.Fatalf("decode whole snapshot: %v", err)
	}
	if !reflect.DeepEqual(&back, s) {
		t.Errorf("whole snapshot decodes to\n%+v\nwant\n%+v", back, *s)
	}
	if b := string(r.Base.JSON); strings.Contains(b, `"version"`) || strings.Contains(b, `"upstreams"`) {
		t.Errorf("base %s names a version or upstreams", b)
	}
	if len(r.Upstreams) != 2 || r.Upstreams[0].Name != "api" || r.Upstreams[1].Name != "db" {
		t.Fatalf("upstream resources %+v, want api and db", r.Upstreams)
	}

	m.Instances["db"] = append(m.Instances["db"], v1.Instance{ID: "db-2", Service: "db", Address: "10.0.0.2", Port: 20000, Healthy: true})
	s2, r2 := ComputeSplit(m, p)
	if s2.Version == s.Version {
		t.Errorf("version unchanged by a new endpoint")
	}
	if r2.Base.Hash != r.Base.Hash || r2.Upstreams[0].Hash != r.Upstreams[0].Hash || r2.Upstreams[1].Hash == r.Upstreams[1].Hash {
		t.Errorf("hashes after a db endpoint change: base same %v, api same %v, db same %v; want true, true, false",
			r2.Base.Hash == r.Base.Hash, r2.Upstreams[0].Hash == r.Upstreams[0].Hash, r2.Upstreams[1].Hash == r.Upstreams[1].Hash)
	}
	if again, _ := Split(s2); again.Version != s2.Version {
		t.Errorf("Split of a computed snapshot: version %s, want %s", again.Version, s2.Version)
	}
}
