package control

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/trellistest"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// regServer is a control plane on an embedded etcd, and an admin client.
type regServer struct {
	srv *Server
	api *client.Client
	dir string
	ads discoveryv3.AggregatedDiscoveryServiceClient
}

func startRegServer(t *testing.T, cfg Config) *regServer {
	t.Helper()
	cfg.DataDir, cfg.Listen, cfg.Out = t.TempDir(), "127.0.0.1:0", io.Discard
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := startRole(srv.Run)
	t.Cleanup(func() { r.stop(t, "control plane") })
	select {
	case <-srv.Ready():
	case err := <-r.done:
		t.Fatalf("control plane: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("control plane not ready")
	}
	caPEM, err := os.ReadFile(filepath.Join(cfg.DataDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &regServer{srv: srv, api: adminClient(t, srv, cfg.DataDir), dir: cfg.DataDir, ads: discoveryv3.NewAggregatedDiscoveryServiceClient(conn)}
}

func (rs *regServer) token(t *testing.T, service string) string {
	t.Helper()
	b, err := os.ReadFile(serviceToken(t, rs.api, rs.dir, service))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// rawStream is a proxy's stream, driven by the test.
type rawStream struct {
	st     discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	cancel context.CancelFunc
}

// open registers reg with the token and returns the stream after its first
// snapshot, or the error that ended it.
func (rs *regServer) open(t *testing.T, token string, reg xds.Registration) (*rawStream, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token))
	t.Cleanup(cancel)
	st, err := rs.ads.StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: xds.SnapshotType, Node: reg.Node()}); err != nil {
		cancel()
		return nil, err
	}
	if _, err := st.Recv(); err != nil {
		cancel()
		return nil, err
	}
	return &rawStream{st: st, cancel: cancel}, nil
}

// record reads the instance's registration record.
func (rs *regServer) record(t *testing.T, svc, id string) (registrationRecord, error) {
	t.Helper()
	kv, err := rs.srv.store.Get(t.Context(), registrationKey(svc, id))
	if err != nil {
		return registrationRecord{}, err
	}
	var rec registrationRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		t.Fatal(err)
	}
	return rec, nil
}

// allowWeb is an intention that changes web's snapshot.
func allowWeb(source string) v1.Resource {
	return v1.Resource{Kind: v1.KindIntention, Name: source + "-web", Intention: &v1.IntentionSpec{Source: source, Destination: "web", Action: v1.Allow}}
}

func webReg(claim string) xds.Registration {
	return xds.Registration{Instance: "web-1", Service: "web", Address: "127.0.0.1", Port: 9, Healthy: true, Claim: claim}
}

// A stream that moves keeps the instance's lease: the proxy's next stream,
// with its claim, adopts it; the old stream, which no longer holds the
// registration, ends without deregistering. No other proxy adopts it:
// not with another claim or none under the same token, and another
// service's token reaches only its own records.
func TestRegistrationMovesWithItsClaim(t *testing.T) {
	rs := startRegServer(t, Config{StatusInterval: 50 * time.Millisecond})
	web := rs.token(t, "web")
	claim, other := strings.Repeat("1a", 16), strings.Repeat("2b", 16)

	first, err := rs.open(t, web, webReg(claim))
	if err != nil {
		t.Fatalf("first stream: %v", err)
	}
	rec, err := rs.record(t, "web", "web-1")
	if err != nil {
		t.Fatalf("registration record: %v", err)
	}

	for name, c := range map[string]string{"another claim": other, "no claim": ""} {
		_, err := rs.open(t, web, webReg(c))
		if status.Code(err) != codes.AlreadyExists {
			t.Errorf("%s, same token: err %v, want AlreadyExists", name, err)
		}
	}
	// Another service's token may not register web; registering its own
	// instance of the same ID and claim gets a lease of its own.
	api := rs.token(t, "api")
	if _, err := rs.open(t, api, webReg(claim)); status.Code(err) != codes.PermissionDenied {
		t.Errorf("api's token registering web: err %v, want PermissionDenied", err)
	}
	apiReg := webReg(claim)
	apiReg.Service = "api"
	if _, err := rs.open(t, api, apiReg); err != nil {
		t.Fatalf("api/web-1: %v", err)
	}
	if got, err := rs.record(t, "api", "web-1"); err != nil || got.Lease == rec.Lease {
		t.Errorf("api/web-1 has lease %x (%v); want one of its own, not web/web-1's %x", got.Lease, err, rec.Lease)
	}

	second, err := rs.open(t, web, webReg(claim))
	if err != nil {
		t.Fatalf("the proxy's next stream: %v", err)
	}
	moved, err := rs.record(t, "web", "web-1")
	if err != nil || moved.Lease != rec.Lease || moved.Holder == rec.Holder {
		t.Fatalf("after the move: record %+v (%v); want lease %x held by a new stream", moved, err, rec.Lease)
	}

	// The first stream's next write (its status after a push) finds it
	// does not hold the registration; that ends it, and leaves the
	// records alone.
	if _, err := rs.api.Apply(t.Context(), []v1.Resource{{Kind: v1.KindService, Name: "web", Service: &v1.ServiceSpec{Protocol: v1.ProtocolHTTP, Port: 80}}}); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := first.st.Recv(); err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Errorf("first stream ended with %v, want Unavailable", err)
			}
			break
		}
	}
	trellistest.Eventually(t, 10*time.Second, "the first stream's handler done", func() error {
		if n := testutil.ToFloat64(rs.srv.metrics.proxies); n != 2 {
			return fmt.Errorf("%v proxies connected", n)
		}
		return nil
	})
	if _, err := rs.srv.store.Get(t.Context(), instanceKey("web", "web-1")); err != nil {
		t.Errorf("instance after the old stream ended: %v", err)
	}
	if got, err := rs.record(t, "web", "web-1"); err != nil || got != moved {
		t.Errorf("record after the old stream ended: %+v (%v), want %+v", got, err, moved)
	}

	// The proxy leaving deregisters it at once.
	second.cancel()
	trellistest.Eventually(t, 10*time.Second, "web/web-1 deregistered", func() error {
		for _, k := range []string{registrationKey("web", "web-1"), instanceKey("web", "web-1"), rememberedKey("web", "web-1"), statusKey("web", "web-1")} {
			if _, err := rs.srv.store.Get(t.Context(), k); !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%s: %v", k, err)
			}
		}
		return nil
	})
}

// Acknowledgements and pushes do not write the status each: N of them
// cost a few writes, the last version still reaches the store, and a
// rejection is written at once.
func TestStatusWritesAreBounded(t *testing.T) {
	const interval = 2 * time.Second
	rs := startRegServer(t, Config{StatusInterval: interval})
	web := rs.token(t, "web")
	s, err := rs.open(t, web, webReg(strings.Repeat("1a", 16)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	_, rev, err := rs.srv.store.List(ctx, statusKey("web", "web-1"))
	if err != nil {
		t.Fatal(err)
	}
	watch := rs.srv.store.Watch(ctx, statusKey("web", "web-1"), rev)

	const n = 20
	start := time.Now()
	var last string
	for i := range n {
		if _, err := rs.api.Apply(ctx, []v1.Resource{allowWeb(fmt.Sprintf("c%d", i))}); err != nil {
			t.Fatal(err)
		}
		resp, err := s.st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		last = resp.GetVersionInfo()
		if err := s.st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: xds.SnapshotType, VersionInfo: last, ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	// Every status write is a put; the last one names the last ACK.
	puts := 0
	for acked := false; !acked; {
		select {
		case b := <-watch:
			if b.Err != nil {
				t.Fatal(b.Err)
			}
			for _, ev := range b.Events {
				puts++
				var st v1.ProxyStatus
				json.Unmarshal(ev.KV.Value, &st)
				acked = st.AckedVersion == last
			}
		case <-time.After(3 * interval):
			t.Fatalf("the last ACK (%s) was not written within %v of the last write", last, 3*interval)
		}
	}
	if max := 2 + int(elapsed/interval) + 1; puts > max {
		t.Errorf("%d status writes for %d pushes and ACKs in %v; want at most %d (one per %v)", puts, n, elapsed.Round(time.Millisecond), max, interval)
	}
	t.Logf("%d status writes for %d pushes and %d ACKs in %v", puts, n, n, elapsed.Round(time.Millisecond))

	// A rejection is written without waiting for the interval.
	if _, err := rs.api.Apply(ctx, []v1.Resource{allowWeb("rejected")}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	if err := s.st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: xds.SnapshotType, VersionInfo: last, ResponseNonce: resp.GetNonce(),
		ErrorDetail: status.New(codes.InvalidArgument, "no good").Proto()}); err != nil {
		t.Fatal(err)
	}
	for {
		b := <-watch
		if b.Err != nil {
			t.Fatal(b.Err)
		}
		var st v1.ProxyStatus
		json.Unmarshal(b.Events[len(b.Events)-1].KV.Value, &st)
		if st.Error == "no good" {
			if d := time.Since(sent); d > interval/2 {
				t.Errorf("rejection written after %v, want well within the %v interval", d, interval)
			}
			return
		}
	}
}

func TestStatusUrgent(t *testing.T) {
	exp := time.Date(2026, 12, 8, 3, 0, 0, 0, time.UTC)
	later := exp.Add(time.Hour)
	base := v1.ProxyStatus{Instance: "web-1", Service: "web", SentVersion: "a", AckedVersion: "a", AckedRoots: []string{"r1"},
		Paths: []v1.UpstreamPath{{Service: "db", Path: "direct"}}, Node: "n1", SVIDExpiresAt: &exp}
	tests := map[string]struct {
		change func(*v1.ProxyStatus)
		want   bool
	}{
		"nothing":        {func(*v1.ProxyStatus) {}, false},
		"sent version":   {func(s *v1.ProxyStatus) { s.SentVersion = "b" }, false},
		"acked version":  {func(s *v1.ProxyStatus) { s.SentVersion, s.AckedVersion = "b", "b" }, false},
		"rejection":      {func(s *v1.ProxyStatus) { s.Error = "bad" }, true},
		"new root":       {func(s *v1.ProxyStatus) { s.AckedRoots = []string{"r1", "r2"} }, true},
		"path":           {func(s *v1.ProxyStatus) { s.Paths = []v1.UpstreamPath{{Service: "db", Path: "none"}} }, true},
		"node":           {func(s *v1.ProxyStatus) { s.Node = "n2" }, true},
		"svid renewed":   {func(s *v1.ProxyStatus) { s.SVIDExpiresAt = &later }, true},
		"svid forgotten": {func(s *v1.ProxyStatus) { s.SVIDExpiresAt = nil }, true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			now := base
			tt.change(&now)
			if got := statusUrgent(base, now); got != tt.want {
				t.Errorf("statusUrgent = %v, want %v", got, tt.want)
			}
		})
	}
}
