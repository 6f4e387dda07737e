package sidecar

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/topology"
	"github.com/trellis-mesh/trellis/internal/trellistest"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// scriptedADS is a control plane that sends what a test hands it and
// passes the proxy's requests back.
type scriptedADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	send chan *discoveryv3.DiscoveryResponse
	reqs chan *discoveryv3.DiscoveryRequest
}

func (a *scriptedADS) StreamAggregatedResources(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				return
			}
			select {
			case a.reqs <- r:
			case <-st.Context().Done():
				return
			}
		}
	}()
	for {
		select {
		case r := <-a.send:
			if err := st.Send(r); err != nil {
				return err
			}
		case <-st.Context().Done():
			return nil
		}
	}
}

// A patch (one upstream's endpoints changed) is applied and ACKed with
// its version; a patch from another version, and one whose result is
// invalid, are NACKed and the snapshot in use stays.
func TestStreamAppliesPatchesAndRejectsBadOnes(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	mesh := &topology.Mesh{
		TrustDomain: "trellis.local", RootsPEM: string(ca.RootsPEM()), Mesh: &v1.MeshSpec{},
		Services: map[string]*v1.ServiceSpec{"db": {Protocol: "tcp"}, "cache": {Protocol: "tcp"}},
		Instances: map[string][]v1.Instance{
			"db":    {{ID: "db-1", Service: "db", Address: "10.0.0.1", Port: 20000, Healthy: true}},
			"cache": {{ID: "cache-1", Service: "cache", Address: "10.0.0.2", Port: 20000, Healthy: true}},
		},
	}
	view := topology.Proxy{Service: "web", Upstreams: []string{"cache", "db"}}
	s1, r1 := topology.ComputeSplit(mesh, view)
	mesh.Instances["db"] = append(mesh.Instances["db"], v1.Instance{ID: "db-2", Service: "db", Address: "10.0.0.3", Port: 20000, Healthy: true})
	s2, r2 := topology.ComputeSplit(mesh, view)
	mesh.Instances["db"] = append(mesh.Instances["db"], v1.Instance{ID: "db-3", Service: "db", Address: "10.0.0.4", Port: 0, Healthy: true})
	s3, r3 := topology.ComputeSplit(mesh, view)

	ads := &scriptedADS{send: make(chan *discoveryv3.DiscoveryResponse), reqs: make(chan *discoveryv3.DiscoveryRequest)}
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, ads)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(gs.ServeHTTP))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	conn, err := grpc.NewClient(strings.TrimPrefix(srv.URL, "https://"), grpc.WithTransportCredentials(credentials.NewTLS(srv.Client().Transport.(*http.Transport).TLSClientConfig)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	p, err := New(Config{Service: "web", AppAddr: "127.0.0.1:1", Server: "127.0.0.1:1", Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	p.reg.Store(&xds.Registration{Instance: "web-1", Service: "web", Address: "127.0.0.1", Port: 9, Upstreams: view.Upstreams, Healthy: true})
	pool := l4.NewPool(0, 0, nil)
	t.Cleanup(pool.Close)
	done := make(chan error, 1)
	go func() { done <- p.stream(t.Context(), discoveryv3.NewAggregatedDiscoveryServiceClient(conn), pool) }()
	t.Cleanup(func() { conn.Close(); <-done })

	next := func() *discoveryv3.DiscoveryRequest {
		t.Helper()
		select {
		case r := <-ads.reqs:
			return r
		case err := <-done:
			t.Fatalf("stream ended: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("no request from the proxy")
		}
		return nil
	}
	if r := next(); !strings.Contains(strings.Join(r.GetNode().GetClientFeatures(), " "), xds.FeaturePatch) {
		t.Fatalf("first request's client features %v, want %s", r.GetNode().GetClientFeatures(), xds.FeaturePatch)
	}
	exchange := func(resp *discoveryv3.DiscoveryResponse) *discoveryv3.DiscoveryRequest {
		t.Helper()
		ads.send <- resp
		return next()
	}
	ack := exchange(xds.Respond(s1.Version, "1", xds.FullResource(r1)))
	if ack.GetErrorDetail() != nil || ack.GetVersionInfo() != s1.Version {
		t.Fatalf("whole snapshot: got version %q, error %v; want an ACK of %s", ack.GetVersionInfo(), ack.GetErrorDetail(), s1.Version)
	}

	patch, ok := xds.PatchResource(r1, r2)
	if !ok {
		t.Fatal("no patch for one changed upstream")
	}
	ack = exchange(xds.Respond(s2.Version, "2", patch))
	if ack.GetErrorDetail() != nil || ack.GetVersionInfo() != s2.Version || ack.GetResponseNonce() != "2" {
		t.Fatalf("patch: got version %q nonce %q, error %v; want an ACK of %s", ack.GetVersionInfo(), ack.GetResponseNonce(), ack.GetErrorDetail(), s2.Version)
	}
	if got := len(p.cur.Load().endpoints["db"]); got != 2 {
		t.Fatalf("after the patch db has %d endpoints, want 2", got)
	}
	if got := len(p.cur.Load().endpoints["cache"]); got != 1 {
		t.Fatalf("after the patch cache has %d endpoints, want 1 (kept from the whole snapshot)", got)
	}

	stale, _ := xds.PatchResource(r1, r3) // from version 1, but the proxy holds 2
	invalid, _ := xds.PatchResource(r2, r3)
	for name, tc := range map[string]struct {
		res  *discoveryv3.DiscoveryResponse
		want string
	}{
		"from another version": {xds.Respond(s3.Version, "3", stale), "the current version is"},
		"invalid result":       {xds.Respond(s3.Version, "4", invalid), "port 0"},
	} {
		nack := exchange(tc.res)
		if nack.GetErrorDetail() == nil || !strings.Contains(nack.GetErrorDetail().GetMessage(), tc.want) {
			t.Errorf("%s: got error %v, want a NACK saying %q", name, nack.GetErrorDetail(), tc.want)
		}
		if nack.GetVersionInfo() != s2.Version || nack.GetResponseNonce() != tc.res.Nonce {
			t.Errorf("%s: NACK names version %q nonce %q, want the kept %s and nonce %s", name, nack.GetVersionInfo(), nack.GetResponseNonce(), s2.Version, tc.res.Nonce)
		}
		if a := p.cur.Load(); a.snap.Version != s2.Version || len(a.endpoints["db"]) != 2 {
			t.Errorf("%s: snapshot in use is %s with %d db endpoints, want %s with 2", name, a.snap.Version, len(a.endpoints["db"]), s2.Version)
		}
	}
}
