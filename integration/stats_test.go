//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/stats"
	"github.com/trellis-mesh/trellis/internal/trellistest"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// /v1/stats under a known load: a client calls web through its proxy in
// groups of four (two fast, one failing, one 20 ms slow), ten groups a
// second, each group well inside one summary interval of the wall clock. The
// figures must say 40 requests/s (within 10 %), a success rate of exactly
// 75 %, and a p99 within one histogram bucket of the client's own.
func TestStatsUnderKnownLoad(t *testing.T) {
	s := startServer(t, "--stats-interval", "1s")
	applyYAML(t, s, "kind: Service\nname: web\nspec: {protocol: http}\n")
	s.mustCLI(t, "intention", "allow", "client", "web")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fail":
			w.WriteHeader(http.StatusInternalServerError)
		case "/slow":
			time.Sleep(20 * time.Millisecond) // the app's work, measured
		}
		io.WriteString(w, "web")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	appPort := l.Addr().(*net.TCPAddr).Port

	interval := []string{"--stats-interval", "1s", "--version", "v1"}
	s.startProxy(t, proxyOpts{service: "web", appPort: appPort, extra: interval})
	up, upPort := loopAddr(t)
	s.startProxy(t, proxyOpts{service: "client", appPort: appPort, upstreams: []string{fmt.Sprintf("web:%d", upPort)}, extra: interval})
	s.waitInstances(t, 10*time.Second, "web registered", "web", 1)

	hc := &http.Client{Timeout: 5 * time.Second}
	call := func(path string) (time.Duration, int, error) {
		start := time.Now()
		resp, err := hc.Get("http://" + up + path)
		if err != nil {
			return 0, 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(start), resp.StatusCode, nil
	}
	// No call before the load: every request through the edge is one
	// of the load's (both proxies are ready, web is registered).

	// The load: groups at 100 ms + i*50 ms past each second (the last
	// at 550 ms), so that no group straddles a summary boundary, even
	// with a proxy's summary timer 100 ms late or a group 400 ms slow.
	const groupsPerSecond, perGroup = 10, 4
	ctx, stop := context.WithCancel(t.Context())
	var (
		mu        sync.Mutex
		latencies []time.Duration
		loadErr   error
		wg        sync.WaitGroup
	)
	wg.Go(func() {
		for ctx.Err() == nil {
			now := time.Now()
			sec := now.Truncate(time.Second)
			next := sec.Add(100 * time.Millisecond)
			for next.Before(now) {
				next = next.Add(50 * time.Millisecond)
				if next.Sub(sec) > 550*time.Millisecond {
					sec = sec.Add(time.Second)
					next = sec.Add(100 * time.Millisecond)
				}
			}
			timer := time.NewTimer(time.Until(next))
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
			for _, path := range []string{"/", "/", "/fail", "/slow"} {
				d, code, err := call(path)
				if err == nil && (code == 500) != (path == "/fail") {
					err = fmt.Errorf("%s: status %d", path, code)
				}
				mu.Lock()
				if err != nil && loadErr == nil {
					loadErr = err
				}
				latencies = append(latencies, d)
				mu.Unlock()
			}
		}
	})
	defer func() { stop(); wg.Wait() }()

	// Wait for six complete seconds of load in the figures.
	var st v1.Stats
	trellistest.Eventually(t, 30*time.Second, "six seconds of load in /v1/stats", func() error {
		var err error
		if st, err = s.api.Stats(t.Context(), time.Minute, ""); err != nil {
			return err
		}
		e := findEdge(st, "client", "web")
		if e == nil || e.Requests < 6*groupsPerSecond*perGroup {
			return fmt.Errorf("edge client->web: %+v", e)
		}
		return nil
	})
	mu.Lock()
	if loadErr != nil {
		t.Fatalf("load: %v", loadErr)
	}
	lat := slices.Clone(latencies)
	mu.Unlock()
	slices.Sort(lat)
	clientP99 := lat[int(math.Ceil(0.99*float64(len(lat))))-1].Seconds()

	want := float64(groupsPerSecond * perGroup)
	e := findEdge(st, "client", "web")
	var svc *v1.ServiceStats
	for i := range st.Services {
		if st.Services[i].Name == "web" {
			svc = &st.Services[i]
		}
	}
	if svc == nil {
		t.Fatalf("no figures for service web: %+v", st)
	}
	for _, f := range []struct {
		what string
		tr   v1.Traffic
	}{{"edge client->web", e.Traffic}, {"service web", svc.Traffic}} {
		if math.Abs(f.tr.RequestsPerSecond-want)/want > 0.10 {
			t.Errorf("%s: got %.2f requests/s, want %.0f within 10%%", f.what, f.tr.RequestsPerSecond, want)
		}
		if f.tr.SuccessRate == nil || *f.tr.SuccessRate != 0.75 {
			t.Errorf("%s: got success rate %v (codes %v), want exactly 0.75", f.what, f.tr.SuccessRate, f.tr.Codes)
		}
		if got, want := bucketOf(f.tr.P99Ms/1000), bucketOf(clientP99); got < want-1 || got > want+1 {
			t.Errorf("%s: got p99 %.2f ms (bucket %d), want within one bucket of the client's %.2f ms (bucket %d)", f.what, f.tr.P99Ms, got, clientP99*1000, want)
		}
		t.Logf("%s: %.2f requests/s, success %v, p50 %.2f ms, p99 %.2f ms (client p99 %.2f ms)", f.what, f.tr.RequestsPerSecond, *f.tr.SuccessRate, f.tr.P50Ms, f.tr.P99Ms, clientP99*1000)
	}
	if len(svc.Versions) != 1 || svc.Versions[0].Version != "v1" {
		t.Errorf("web's versions: got %+v, want v1", svc.Versions)
	}
	if len(e.Routes) != 1 || e.Routes[0].Version != "v1" {
		t.Errorf("edge routes: got %+v, want one, to v1", e.Routes)
	}

	// The same through the CLI: trellis top prints once when stdout is
	// not a terminal, trellis stat names the version.
	out := s.mustCLI(t, "top")
	if !strings.Contains(out, "client -> web") || !strings.Contains(out, "75.00%") {
		t.Errorf("trellis top: want the client -> web edge at 75.00%%:\n%s", out)
	}
	out = s.mustCLI(t, "stat", "service", "web")
	if !strings.Contains(out, "v1") || !strings.Contains(out, "client") {
		t.Errorf("trellis stat service web: want version v1 and caller client:\n%s", out)
	}
	// Bad queries are refused, naming the parameter.
	if out, code := s.cli(t, "top", "--window", "30s"); code != 2 || !strings.Contains(out, "--window") {
		t.Errorf("top --window 30s: exit %d, %s; want 2 naming --window", code, out)
	}
	for q, want := range map[string]string{"window=2h": "query parameter window", "service=NO": "query parameter service", "x=1": `query parameter "x"`} {
		resp, body := apiGet(t, s, "/v1/stats?"+q)
		if resp != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Errorf("/v1/stats?%s: got %d %s, want 400 naming %q", q, resp, body, want)
		}
	}
}

func findEdge(st v1.Stats, src, dst string) *v1.EdgeStats {
	for i := range st.Edges {
		if st.Edges[i].Source == src && st.Edges[i].Destination == dst {
			return &st.Edges[i]
		}
	}
	return nil
}

// bucketOf is the index of the latency bucket holding v seconds.
func bucketOf(v float64) int {
	for i, b := range stats.LatencyBounds {
		if v <= b {
			return i
		}
	}
	return len(stats.LatencyBounds)
}

// apiGet GETs path from the API with the admin token and returns the status
// code and the error the body names.
func apiGet(t *testing.T, s *server, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+s.addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+s.admin)
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: clientFor(t, s, "").TLSConfig()}, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Error string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET %s: %d, %v", path, resp.StatusCode, err)
	}
	return resp.StatusCode, body.Error
}

// A proxy reports only its own traffic: on a stream registered as x, a
// summary for y, or of y's traffic, or a malformed one, is refused with
// the reason, and the stream goes on.
func TestStatsSummaryRefused(t *testing.T) {
	s := startServer(t)
	secret := strings.TrimSpace(s.mustCLI(t, "token", "create", "--service", "x", "--service", "y"))
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(clientFor(t, s, "").TLSConfig())))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+secret)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reg := xds.Registration{Instance: "x-1", Service: "x", Address: "127.0.0.1", Port: 9, Healthy: true}
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: xds.SnapshotType, Node: reg.Node()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil { // the first snapshot
		t.Fatal(err)
	}
	entry := func(dir, src, dst string) stats.Entry {
		e := stats.Entry{Key: stats.Key{Direction: dir, Source: src, Destination: dst}}
		e.Codes[1] = 100
		return e
	}
	summary := func(instance, service string, e stats.Entry) *discoveryv3.DiscoveryRequest {
		sum := &stats.Summary{Instance: instance, Service: service, IntervalMS: 5000, Entries: []stats.Entry{e}}
		req, err := xds.SummaryRequest(sum)
		if err != nil {
			t.Fatal(err)
		}
		return req
	}
	malformed := summary("x-1", "x", entry(stats.Outbound, "x", "z"))
	malformed.Node.Metadata.Fields["summary"].Kind = nil
	garbage := summary("x-1", "x", entry(stats.Outbound, "x", "z"))
	garbage.Node.Metadata.Fields["summary"] = structpb.NewStringValue(`{"instance": "x-1", "service": `)
	tests := []struct {
		name string
		req  *discoveryv3.DiscoveryRequest
		want string
	}{
		{"another service", summary("y-1", "y", entry(stats.Outbound, "y", "z")), `summary for service "y" on the stream of "x"`},
		{"another instance", summary("x-2", "x", entry(stats.Outbound, "x", "z")), `summary for instance "x-2" on the stream of "x-1"`},
		{"another service's traffic", summary("x-1", "x", entry(stats.Outbound, "y", "z")), `outbound traffic from "y": a proxy of "x" reports only its own service's`},
		{"traffic to another service", summary("x-1", "x", entry(stats.Inbound, "z", "y")), `inbound traffic to "y"`},
		{"malformed", malformed, "node metadata summary is not a string"},
		{"not JSON", garbage, "decode summary: unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := st.Send(tt.req); err != nil {
				t.Fatal(err)
			}
			// Snapshots may come between (the mesh changes as x
			// registers): the refusal is the next summary-typed answer.
			var resp *discoveryv3.DiscoveryResponse
			for resp.GetTypeUrl() != stats.SummaryType {
				r, err := st.Recv()
				if err != nil {
					t.Fatal(err)
				}
				resp = r
				if typ := resp.GetTypeUrl(); typ != stats.SummaryType && typ != xds.SnapshotType {
					t.Fatalf("got a response of type %q, want the refusal (%s)", typ, stats.SummaryType)
				}
			}
			if got := xds.RefusalFrom(resp); !strings.Contains(got, tt.want) {
				t.Errorf("got refusal %q, want it to contain %q", got, tt.want)
			}
		})
	}
	// The server logged the refusals; the stream still serves: an
	// accepted summary has no answer, and the registration stands.
	if err := st.Send(summary("x-1", "x", entry(stats.Outbound, "x", "z"))); err != nil {
		t.Fatal(err)
	}
	s.waitInstances(t, 5*time.Second, "x still registered", "x", 1)
	trellistest.Eventually(t, 5*time.Second, "refusal logged", func() error {
		if !strings.Contains(s.logText(), "traffic summary refused") {
			return fmt.Errorf("no refusal in the server's log")
		}
		return nil
	})
	// Nothing of y's was filed.
	got, err := s.api.Stats(t.Context(), 15*time.Minute, "y")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Edges) != 0 || len(got.Services) != 0 {
		t.Errorf("stats of y: got %+v, want none", got)
	}

	// Readers: a viewer token reads the figures; a service token does not.
	viewer := strings.TrimSpace(s.mustCLI(t, "token", "create", "--viewer"))
	if _, err := clientFor(t, s, viewer).Topology(t.Context(), 0, ""); err != nil {
		t.Errorf("a viewer reads /v1/topology: %v", err)
	}
	if _, err := clientFor(t, s, secret).Stats(t.Context(), 0, ""); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("a service token reads /v1/stats: got %v, want 403", err)
	}
}
