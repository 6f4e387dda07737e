package xds

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/trellis-mesh/trellis/internal/topology"
)

func TestRegistrationRoundTrip(t *testing.T) {
	r := Registration{Instance: "web-1", Service: "web", Version: "v2", Address: "10.0.0.7", Port: 20000, Network: "vpc-a", Upstreams: []string{"db", "cache"}, Healthy: true,
		Claim: strings.Repeat("0a", 16)}
	got, err := FromNode(r.Node())
	if err != nil {
		t.Fatalf("FromNode: %v", err)
	}
	if got.Instance != r.Instance || got.Service != r.Service || got.Version != r.Version || got.Address != r.Address ||
		got.Port != r.Port || got.Network != r.Network || !got.Healthy || len(got.Upstreams) != 2 || got.Upstreams[1] != "cache" ||
		got.Claim != r.Claim {
		t.Errorf("round trip = %+v, want %+v", got, r)
	}
}

func TestRegistrationNodeInfo(t *testing.T) {
	exp := time.Date(2026, 12, 8, 3, 0, 0, 0, time.UTC)
	r := Registration{Instance: "web-1", Service: "web", Address: "10.0.0.7", Port: 20000,
		NodeInfo: NodeInfo{NodeName: "ip-10-0-0-7.ec2.internal", SVIDExpiresAt: exp}}
	got, err := FromNode(r.Node())
	if err != nil {
		t.Fatalf("FromNode: %v", err)
	}
	if got.NodeName != r.NodeName || !got.SVIDExpiresAt.Equal(exp) {
		t.Errorf("node info = %+v, want %+v", got.NodeInfo, r.NodeInfo)
	}
	// A proxy that predates the block registers with an empty one.
	n := r.Node()
	delete(n.Metadata.Fields, "nodeInfo")
	if got, err := FromNode(n); err != nil || got.NodeInfo != (NodeInfo{}) {
		t.Errorf("without nodeInfo: %+v, %v; want an empty NodeInfo", got.NodeInfo, err)
	}
	n = r.Node()
	n.Metadata.Fields["nodeInfo"].GetStructValue().Fields["svidExpiresAt"] = structpb.NewStringValue("tomorrow")
	if _, err := FromNode(n); err == nil || !strings.Contains(err.Error(), "svidExpiresAt") {
		t.Errorf("bad svidExpiresAt: err %v, want one naming the field", err)
	}
}

func TestFromNodeRejects(t *testing.T) {
	good := Registration{Instance: "web-1", Service: "web", Address: "127.0.0.1", Port: 1}
	tests := map[string]func(*Registration){
		"bad service":  func(r *Registration) { r.Service = "Web" },
		"bad instance": func(r *Registration) { r.Instance = "a/b" },
		"no address":   func(r *Registration) { r.Address = "" },
		"bad port":     func(r *Registration) { r.Port = 70000 },
		"bad upstream": func(r *Registration) { r.Upstreams = []string{"UP"} },
		"bad network":  func(r *Registration) { r.Network = "vpc_a" },
		"long network": func(r *Registration) { r.Network = strings.Repeat("a", 64) },
		"long node":    func(r *Registration) { r.NodeName = strings.Repeat("n", 254) },
		"control node": func(r *Registration) { r.NodeName = "host\x1b[31m" },
		"short claim":  func(r *Registration) { r.Claim = "0a0a" },
		"long claim":   func(r *Registration) { r.Claim = strings.Repeat("a", 129) },
		"upper claim":  func(r *Registration) { r.Claim = strings.Repeat("A", 32) },
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			r := good
			mutate(&r)
			if _, err := FromNode(r.Node()); err == nil {
				t.Errorf("FromNode accepted %+v", r)
			}
		})
	}
	if _, err := FromNode(nil); err == nil {
		t.Error("FromNode(nil) succeeded")
	}
}

func TestSnapshotResponse(t *testing.T) {
	s := &topology.Snapshot{Version: "abc", Service: "web", TrustDomain: "td", RootsPEM: "x", MTLS: "strict"}
	resp, err := Response(s, "1")
	if err != nil {
		t.Fatal(err)
	}
	back, err := SnapshotFrom(resp)
	if err != nil || back.Service != "web" {
		t.Fatalf("SnapshotFrom = %+v, %v", back, err)
	}
	resp.VersionInfo = "other"
	if _, err := SnapshotFrom(resp); err == nil {
		t.Error("a response whose version differs from its snapshot's was accepted")
	}
}

// FuzzFromNode feeds arbitrary node metadata, as a hostile proxy could send.
func FuzzFromNode(f *testing.F) {
	f.Add("web-1", "web", "127.0.0.1", "8080", "v1", "db", "host-a", "2026-12-08T03:00:00Z", "")
	f.Add("", "", "", "", "", "", "", "", "")
	f.Add("web-1", "web", "127.0.0.1", "8080", "", "", "", "", "0123456789abcdef0123456789abcdef")
	f.Add("web-1", "web", "127.0.0.1", "8080", "", "", "", "", "0123456789ABCDEF0123456789ABCDEF")
	f.Fuzz(func(t *testing.T, id, svc, addr, port, version, upstream, node, svidExp, claim string) {
		md, err := structpb.NewStruct(map[string]any{"address": addr, "port": port, "version": version, "upstreams": []any{upstream},
			"nodeInfo": map[string]any{"node": node, "svidExpiresAt": svidExp}, "claim": claim})
		if err != nil {
			return
		}
		r, err := FromNode(&corev3.Node{Id: id, Cluster: svc, Metadata: md})
		if err != nil {
			return
		}
		if r.Validate() != nil {
			t.Fatalf("FromNode returned an invalid registration %+v", r)
		}
	})
}

// The claim is what lets a stream take a live registration over: it must
// not show where a registration is rendered (the proxy's /config, logs of
// it), only travel in the node to the control plane.
func TestRegistrationJSONHidesClaim(t *testing.T) {
	claim := strings.Repeat("5c", 16)
	r := Registration{Instance: "web-1", Service: "web", Address: "10.0.0.7", Port: 20000, Claim: claim}
	b, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), claim) {
		t.Errorf("registration JSON %s shows the claim", b)
	}
	if !strings.Contains(string(b), "web-1") {
		t.Errorf("registration JSON %s lacks the instance", b)
	}
	if got, err := FromNode(r.Node()); err != nil || got.Claim != claim {
		t.Errorf("claim through the node = %q (%v), want %q", got.Claim, err, claim)
	}
}
