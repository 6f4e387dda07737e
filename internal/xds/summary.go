package xds

import (
	"encoding/json"
	"errors"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/trellis-mesh/trellis/internal/stats"
)

// summaryField is the node metadata field that holds a summary's JSON.
const summaryField = "summary"

// SummaryRequest wraps a traffic summary in a discovery request of type
// stats.SummaryType on the proxy's stream: the node names the proxy (id
// the instance, cluster the service) and its metadata's "summary" field
// holds the summary's JSON. ADS multiplexes types by type URL, so the
// server tells it from ACKs and registration updates by that alone.
func SummaryRequest(s *stats.Summary) (*discoveryv3.DiscoveryRequest, error) {
	b, err := s.Encode()
	if err != nil {
		return nil, err
	}
	return &discoveryv3.DiscoveryRequest{
		TypeUrl: stats.SummaryType,
		Node: &corev3.Node{Id: s.Instance, Cluster: s.Service, UserAgentName: "trellis",
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{summaryField: structpb.NewStringValue(string(b))}}},
	}, nil
}

// SummaryFrom decodes and validates the summary of a request of type
// stats.SummaryType; the node's id and cluster must be the summary's.
func SummaryFrom(r *discoveryv3.DiscoveryRequest) (*stats.Summary, error) {
	if r.GetTypeUrl() != stats.SummaryType {
		return nil, fmt.Errorf("request of type %q, want %s", r.GetTypeUrl(), stats.SummaryType)
	}
	n := r.GetNode()
	v, ok := n.GetMetadata().GetFields()[summaryField]
	if !ok {
		return nil, errors.New("summary request: node metadata has no summary field")
	}
	sv, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return nil, errors.New("summary request: node metadata summary is not a string")
	}
	s, err := stats.Decode([]byte(sv.StringValue))
	if err != nil {
		return nil, err
	}
	if n.GetId() != s.Instance || n.GetCluster() != s.Service {
		return nil, fmt.Errorf("summary request: node %q of %q carries the summary of %q of %q", n.GetId(), n.GetCluster(), s.Instance, s.Service)
	}
	return s, nil
}

// SummaryRefusal is the server's answer to a summary it refused.
func SummaryRefusal(reason string) *discoveryv3.DiscoveryResponse {
	b, _ := json.Marshal(map[string]string{"error": reason})
	return &discoveryv3.DiscoveryResponse{
		TypeUrl:   stats.SummaryType,
		Resources: []*anypb.Any{{TypeUrl: stats.RefusalType, Value: b}},
	}
}

// RefusalFrom reads the reason of a summary refusal.
func RefusalFrom(resp *discoveryv3.DiscoveryResponse) string {
	var v struct {
		Error string `json:"error"`
	}
	if len(resp.GetResources()) == 1 {
		_ = json.Unmarshal(resp.GetResources()[0].GetValue(), &v)
	}
	if v.Error == "" {
		return "(no reason given)"
	}
	return v.Error
}
