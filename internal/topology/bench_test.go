package topology

import (
	"fmt"
	"testing"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// BenchmarkCompute measures one proxy's snapshot in a mesh of 1000 services
// with 3 instances each and an intention per service, for a proxy with 20
// upstreams: the work the control plane repeats per proxy per change.
func BenchmarkCompute(b *testing.B) {
	m := &Mesh{TrustDomain: "td", RootsPEM: "r", Mesh: &v1.MeshSpec{}, Services: map[string]*v1.ServiceSpec{}, Instances: map[string][]v1.Instance{}}
	for i := range 1000 {
		name := fmt.Sprintf("svc-%d", i)
		m.Services[name] = &v1.ServiceSpec{Protocol: "tcp"}
		for j := range 3 {
			m.Instances[name] = append(m.Instances[name], v1.Instance{ID: fmt.Sprintf("%s-%d", name, j), Address: "10.0.0.1", Port: 20000 + j, Healthy: true})
		}
		m.Intentions = append(m.Intentions, v1.IntentionSpec{Source: fmt.Sprintf("svc-%d", (i+1)%1000), Destination: name, Action: v1.Allow})
	}
	var ups []string
	for i := range 20 {
		ups = append(ups, fmt.Sprintf("svc-%d", i*7))
	}
	b.ReportAllocs()
	for b.Loop() {
		Compute(m, Proxy{Service: "svc-5", Upstreams: ups})
	}
}
