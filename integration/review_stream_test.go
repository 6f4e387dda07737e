//go:build linux

package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/trellis-mesh/trellis/internal/xds"
)

// A stream that never reads its pushes outlives its token. The server's
// stream loop blocks in Send once the stream's flow-control window is
// full, so it never reaches the select that re-checks the token (or its
// expiry), while the lease keep-alive runs on in its own goroutine: the
// instance stays registered, healthy, at an address its holder chose.
// The holder fills the window itself: the stuck stream lists its own
// service as an upstream, and short-lived streams of the same token
// change that service's endpoints.
func TestReviewRevokedTokenStuckStream(t *testing.T) {
	s := startServer(t)
	secret := strings.TrimSpace(s.mustCLI(t, "token", "create", "--service", "x"))
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(clientFor(t, s, "").TLSConfig())),
		grpc.WithInitialWindowSize(65535), grpc.WithInitialConnWindowSize(65535))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+secret)
	open := func(inst string, ups []string) (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, context.CancelFunc) {
		sctx, cancel := context.WithCancel(ctx)
		st, err := ads.StreamAggregatedResources(sctx)
		if err != nil {
			t.Fatal(err)
		}
		reg := xds.Registration{Instance: inst, Service: "x", Address: "127.0.0.1", Port: 9, Upstreams: ups, Healthy: true}
		if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: xds.SnapshotType, Node: reg.Node()}); err != nil {
			t.Fatal(err)
		}
		return st, cancel
	}
	_, stopStuck := open("x-stuck", []string{"x"}) // never read
	defer stopStuck()
	s.waitInstances(t, 10*time.Second, "x-stuck registered", "x", 1)
	for i := range 300 {
		// A churn stream is registered once its first snapshot comes:
		// each one changes x's endpoints, which the stuck stream is sent.
		st, cancel := open(fmt.Sprintf("x-churn-%d", i), nil)
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	s.waitInstances(t, 10*time.Second, "churn instances gone", "x", 1)

	s.mustCLI(t, "token", "delete", tokenID(t, s, "x"))
	s.waitInstances(t, 5*time.Second, "the revoked token's stuck stream deregistered", "x", 0)
}
