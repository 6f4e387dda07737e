//go:build linux

package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// A canary with two servers on one etcd: one server at a time drives it
// (the holder of the canary lock); killed mid-canary, the other takes
// over within the lock's lease and finishes it, and the Route's history
// shows each step once, in order, never two moves within one interval.
// The proxies are on the server that is not killed, so that the traffic
// and its summaries go on; the leader sees them by the servers' pushes.
func TestCanaryTwoServersTakeover(t *testing.T) {
	const interval = 3 * time.Second
	endpoint := startEtcd(t)
	common := []string{"--etcd-endpoints", endpoint, "--stats-interval", "1s", "--lease-ttl", "3s"}
	a := startServer(t, common...)
	addrB := fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))
	dirB := t.TempDir()
	procB := start(t, "server-b", nil, append([]string{"server", "--data-dir", dirB, "--listen", addrB,
		"--store-secret-file", filepath.Join(a.dataDir, "store-secret")}, common...)...)
	caPEM, _ := os.ReadFile(a.caFile)
	apiB, _ := client.New(client.Config{Addr: addrB, Token: a.admin, CAPEM: caPEM})
	b := &server{proc: procB, addr: addrB, dataDir: dirB, caFile: a.caFile, admin: a.admin, api: apiB}
	trellistest.Eventually(t, 30*time.Second, "server b answers", func() error {
		_, err := apiB.Services(t.Context())
		return err
	})

	// Exactly one server drives canaries.
	drives := func(s *server) int { return strings.Count(s.logText(), "driving canaries") }
	var leader, other *server
	trellistest.Eventually(t, 15*time.Second, "one server holds the canary lock", func() error {
		da, db := drives(a), drives(b)
		switch {
		case da+db == 0:
			return fmt.Errorf("neither drives canaries yet")
		case da > 0 && db > 0:
			return fmt.Errorf("both servers drive canaries (a %d, b %d)", da, db)
		case da > 0:
			leader, other = a, b
		default:
			leader, other = b, a
		}
		return nil
	})

	applyYAML(t, other, "kind: Service\nname: shop\nspec: {protocol: http}\n")
	other.mustCLI(t, "intention", "allow", "client", "shop")
	v1App, v2App := startCanaryApp(t, "v1", false), startCanaryApp(t, "v2", false)
	flags := []string{"--stats-interval", "1s"}
	other.startProxy(t, proxyOpts{service: "shop", appPort: v1App.port, extra: append([]string{"--version", "v1"}, flags...)})
	other.startProxy(t, proxyOpts{service: "shop", appPort: v2App.port, extra: append([]string{"--version", "v2"}, flags...)})
	up, port := loopAddr(t)
	other.startProxy(t, proxyOpts{service: "client", appPort: v1App.port, extra: flags, upstreams: []string{fmt.Sprintf("shop:%d", port)}})
	other.waitInstances(t, 10*time.Second, "shop's versions registered", "shop", 2)

	hc := &http.Client{Timeout: 5 * time.Second}
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	load := &canaryLoad{bodies: map[string]int{}}
	wg.Go(func() { load.run(ctx, hc, "http://"+up+"/", 20*time.Millisecond) })
	defer func() { stop(); wg.Wait() }()

	applyYAML(t, other, fmt.Sprintf(`kind: Route
name: shop
spec:
  rules:
    - name: release
      targets:
        - {version: v1, weight: 100}
        - {version: v2, weight: 0}
      canary: {version: v2, steps: [10, 25, 50, 100], interval: %v, minSuccessRate: 99, maxP99: 500ms, minRequests: 5}
`, interval))

	// The leader moves it on once; then it is killed, lock and all.
	trellistest.Eventually(t, 6*interval, "the leader moves the canary to its second step", func() error {
		st, err := other.api.Canary(t.Context(), "shop")
		if err != nil {
			return err
		}
		if st.Step < 1 {
			return fmt.Errorf("state %s at step %d, last %+v", st.State, st.Step, st.Last)
		}
		return nil
	})
	if n := drives(other); n != 0 {
		t.Fatalf("the other server drove canaries too (%d times) while the leader held the lock", n)
	}
	leader.proc.kill(syscall.SIGKILL)
	killed := time.Now()

	var st v1.CanaryStatus
	trellistest.Eventually(t, 10*interval, "the other server finishes the canary", func() error {
		var err error
		if st, err = other.api.Canary(t.Context(), "shop"); err != nil {
			return err
		}
		if st.State != v1.CanaryPromoted {
			return fmt.Errorf("state %s at step %d, last %+v", st.State, st.Step, st.Last)
		}
		return nil
	})
	if drives(other) == 0 {
		t.Fatalf("the canary was promoted, yet the other server never drove canaries:\n%s", tail(other.logText(), 30))
	}
	t.Logf("promoted %v after the leader was killed", time.Since(killed).Round(time.Millisecond))

	// Each step once, in order, an interval apart at least.
	want := []string{"started: v2 at 10 %", "step 2 of 4: v2 at 25 %", "step 3 of 4: v2 at 50 %", "step 4 of 4: v2 at 100 %", "promoted"}
	got := st.Events
	if len(got) != len(want) {
		t.Fatalf("events %v; want exactly %q", got, want)
	}
	for i, ev := range got {
		if !strings.HasPrefix(ev.Message, want[i]) {
			t.Errorf("event %d: %q, want %q", i, ev.Message, want[i])
		}
		if i > 0 {
			if gap := ev.At.Sub(got[i-1].At); gap < interval {
				t.Errorf("event %d (%q) came %v after the one before, under one interval (%v): a double step", i, ev.Message, gap, interval)
			}
		}
	}
	res, err := other.api.Get(t.Context(), v1.KindRoute, "shop")
	if err != nil {
		t.Fatal(err)
	}
	if tg := res.Route.Rules[0].Targets; tg[0].Weight != 0 || tg[1].Weight != 100 {
		t.Errorf("weights after the promotion: %+v; want v1 0, v2 100", tg)
	}
	if total, failed := load.counts(); failed > 0 {
		t.Errorf("%d of %d requests failed", failed, total)
	}
}
