package control

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/trellis-mesh/trellis/internal/xds"
)

// A proxy that offers xds.ALPN gets it, and its stream is served on it
// (net/http knows no such protocol: only gRPC's own transport can serve
// it); one that offers only "h2" is served as before. A client that
// connects and never says a word holds up neither.
func TestProxyStreamOnItsOwnProtocol(t *testing.T) {
	rs := startRegServer(t, Config{})
	token := rs.token(t, "web")
	caPEM, err := os.ReadFile(filepath.Join(rs.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)

	silent, err := net.Dial("tcp", rs.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	for i, c := range []struct {
		offer []string
		want  string
	}{
		{[]string{xds.ALPN, "h2"}, xds.ALPN},
		{[]string{"h2"}, "h2"},
	} {
		cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: c.offer}
		tc, err := tls.Dial("tcp", rs.srv.Addr(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := tc.ConnectionState().NegotiatedProtocol; got != c.want {
			t.Errorf("offered %q: negotiated %q, want %q", c.offer, got, c.want)
		}
		tc.Close()

		conn, err := grpc.NewClient(rs.srv.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+token))
		defer cancel()
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		reg := xds.Registration{Service: "web", Instance: "web-" + string(rune('a'+i)), Address: "127.0.0.1", Port: 8080 + i}
		if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: xds.SnapshotType, Node: reg.Node()}); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("offered %q: %v", c.offer, err)
		}
		if resp.GetTypeUrl() != xds.SnapshotType {
			t.Errorf("offered %q: first response is %q", c.offer, resp.GetTypeUrl())
		}
	}
}

// A client that is not yet authenticated gets no more room on gRPC's
// transport than on the HTTP server: a header block past 64 KiB is
// refused before any handler runs.
func TestProxyStreamHeaderBound(t *testing.T) {
	rs := startRegServer(t, Config{})
	caPEM, err := os.ReadFile(filepath.Join(rs.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{xds.ALPN, "h2"}}
	conn, err := grpc.NewClient(rs.srv.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-pad", strings.Repeat("a", 100<<10))
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err == nil {
		_, err = st.Recv()
	}
	if err == nil || !strings.Contains(err.Error(), "header") {
		t.Fatalf("a 100 KiB header block: %v, want it refused for its size", err)
	}
}
