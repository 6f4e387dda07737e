//go:build linux

package integration

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// canaryApp answers its version's name, and 500 to every other request
// when failing.
type canaryApp struct {
	port    int
	served  atomic.Int64
	failing bool
}

func startCanaryApp(t *testing.T, version string, failing bool) *canaryApp {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &canaryApp{port: l.Addr().(*net.TCPAddr).Port, failing: failing}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		if n := a.served.Add(1); a.failing && n%2 == 0 {
			w.WriteHeader(http.StatusInternalServerError)
		}
		io.WriteString(w, version)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return a
}

// canaryLoad calls one service through the client's proxy at a fixed
// rate and counts the answers.
type canaryLoad struct {
	mu     sync.Mutex
	total  int
	failed int            // 5xx and transport errors
	bodies map[string]int // body of each 200
}

func (l *canaryLoad) run(ctx context.Context, hc *http.Client, url string, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		resp, err := hc.Get(url)
		body := ""
		ok := err == nil && resp.StatusCode == http.StatusOK
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}
		if ctx.Err() != nil {
			return // cut by the end of the load, not failed
		}
		l.mu.Lock()
		l.total++
		if ok {
			l.bodies[body]++
		} else {
			l.failed++
		}
		l.mu.Unlock()
	}
}

// waitQuiet waits until app has served none of 50 requests in a row.
func (l *canaryLoad) waitQuiet(t *testing.T, app *canaryApp, what string) {
	t.Helper()
	n0, before := -1, int64(0)
	trellistest.Eventually(t, 10*time.Second, what, func() error {
		n, _ := l.counts()
		switch served := app.served.Load(); {
		case n0 < 0 || served != before:
			n0, before = n, served
			return fmt.Errorf("served %d so far", served)
		case n < n0+50:
			return fmt.Errorf("%d requests without it, want 50", n-n0)
		}
		return nil
	})
}

func (l *canaryLoad) counts() (total, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.failed
}

// The metric-gated canary, through the real binary, with two services at
// once: "bad", whose v2 fails half its requests, and "good", whose v2 is
// healthy. Both Routes carry a canary of steps 10, 50, 100 every 3 s;
// proxies and server sum summaries every second. The bad v2 must be
// rolled back (weight 0) within two intervals of its start, having
// failed at most the first step's share of the requests; the good v2
// must reach 100 % and be promoted. Each step is in the status that
// `trellis get route` shows.
func TestMetricGatedCanary(t *testing.T) {
	const interval = 3 * time.Second
	s := startServer(t, "--stats-interval", "1s")
	applyYAML(t, s, "kind: Service\nname: bad\nspec: {protocol: http}\n---\nkind: Service\nname: good\nspec: {protocol: http}\n")
	s.mustCLI(t, "intention", "allow", "client", "bad")
	s.mustCLI(t, "intention", "allow", "client", "good")

	badV1, badV2 := startCanaryApp(t, "v1", false), startCanaryApp(t, "v2", true)
	goodV1, goodV2 := startCanaryApp(t, "v1", false), startCanaryApp(t, "v2", false)
	for _, p := range []struct {
		service, version string
		app              *canaryApp
	}{{"bad", "v1", badV1}, {"bad", "v2", badV2}, {"good", "v1", goodV1}, {"good", "v2", goodV2}} {
		s.startProxy(t, proxyOpts{service: p.service, appPort: p.app.port, extra: []string{"--version", p.version, "--stats-interval", "1s"}})
	}
	badUp, badPort := loopAddr(t)
	goodUp, goodPort := loopAddr(t)
	s.startProxy(t, proxyOpts{service: "client", appPort: badV1.port, extra: []string{"--stats-interval", "1s"},
		upstreams: []string{fmt.Sprintf("bad:%d", badPort), fmt.Sprintf("good:%d", goodPort)}})
	s.waitInstances(t, 10*time.Second, "bad's versions registered", "bad", 2)
	s.waitInstances(t, 10*time.Second, "good's versions registered", "good", 2)

	// Every request to v1 until the canary starts.
	route := func(name string) string {
		return fmt.Sprintf(`kind: Route
name: %s
spec:
  rules:
    - name: release
      targets:
        - {version: v1, weight: 100}
        - {version: v2, weight: 0}
      canary: {version: v2, steps: [10, 50, 100], interval: %v, minSuccessRate: 99, maxP99: 500ms, minRequests: 5}
`, name, interval)
	}
	plain := func(name string) string {
		r := route(name)
		return r[:strings.Index(r, "      canary:")]
	}
	applyYAML(t, s, plain("bad")+"---\n"+plain("good"))
	hc := &http.Client{Timeout: 5 * time.Second}
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	bad, good := &canaryLoad{bodies: map[string]int{}}, &canaryLoad{bodies: map[string]int{}}
	wg.Go(func() { bad.run(ctx, hc, "http://"+badUp+"/", 20*time.Millisecond) })
	wg.Go(func() { good.run(ctx, hc, "http://"+goodUp+"/", 20*time.Millisecond) })
	defer func() { stop(); wg.Wait() }()
	// The load starts on Routes without a canary, every request to v1
	// once they reach the client's proxy: the canary's failures are
	// counted from there.
	bad.waitQuiet(t, badV2, "bad's Route without a canary applied")
	good.waitQuiet(t, goodV2, "good's Route without a canary applied")
	total0, failed0 := bad.counts()
	served0 := badV2.served.Load()
	applyYAML(t, s, route("bad")+"---\n"+route("good"))

	// The bad canary rolls back by itself.
	var st v1.CanaryStatus
	trellistest.Eventually(t, 6*interval, "bad's canary rolled back", func() error {
		var err error
		if st, err = s.api.Canary(t.Context(), "bad"); err != nil {
			return err
		}
		if st.State != v1.CanaryRolledBack {
			return fmt.Errorf("state %s at step %d, last %+v", st.State, st.Step, st.Last)
		}
		return nil
	})
	if len(st.Events) < 2 || !strings.HasPrefix(st.Events[0].Message, "started") || !strings.HasPrefix(st.Events[len(st.Events)-1].Message, "rolled back at step 1 (10 %)") {
		t.Fatalf("bad's events: %+v; want started, then rolled back at step 1", st.Events)
	}
	took := st.Events[len(st.Events)-1].At.Sub(st.Events[0].At)
	if took > 2*interval {
		t.Errorf("bad's canary rolled back %v after it started, want within two intervals (%v)", took, 2*interval)
	}
	// v2's own figures or its callers' (the same requests, as the client's
	// proxy counted them: whichever reached 5 first).
	own := st.Last != nil && st.Last.SuccessRate != nil && *st.Last.SuccessRate < 99 && st.Last.Requests >= 5
	callers := st.Last != nil && st.Last.CallerSuccessRate != nil && *st.Last.CallerSuccessRate < 99 && st.Last.CallerRequests >= 5
	if st.Last == nil || st.Last.Action != "rollback" || !own && !callers {
		t.Errorf("bad's last decision: %+v; want a rollback on a success rate below 99 %% over at least 5 requests", st.Last)
	}
	t.Logf("bad: rolled back %v after the start: %s", took, st.Last.Reason)
	res, err := s.api.Get(t.Context(), v1.KindRoute, "bad")
	if err != nil {
		t.Fatal(err)
	}
	if tg := res.Route.Rules[0].Targets; tg[0] != (v1.RouteTarget{Version: "v1", Weight: 100}) || tg[1] != (v1.RouteTarget{Version: "v2", Weight: 0}) {
		t.Errorf("bad's weights after the rollback: %+v; want v1 100, v2 0", tg)
	}
	// The rollback has reached the client's proxy when v2 serves no more.
	bad.waitQuiet(t, badV2, "bad's v2 out of the traffic")
	total, failed := bad.counts()
	total, failed = total-total0, failed-failed0
	served := badV2.served.Load() - served0
	t.Logf("bad: %d requests, %d failed, %d served by v2", total, failed, served)
	if failed == 0 || served == 0 {
		t.Fatalf("bad's v2 served %d requests, %d failed: the canary never reached it", served, failed)
	}
	if share := float64(failed) / float64(total); share > 0.10 {
		t.Errorf("bad: %d of %d requests failed (%.1f %%), over the first step's share of 10 %%", failed, total, 100*share)
	}

	// The good canary walks every step and is promoted.
	trellistest.Eventually(t, 8*interval, "good's canary promoted", func() error {
		var err error
		if st, err = s.api.Canary(t.Context(), "good"); err != nil {
			return err
		}
		if st.State != v1.CanaryPromoted {
			return fmt.Errorf("state %s at step %d, last %+v", st.State, st.Step, st.Last)
		}
		return nil
	})
	var msgs []string
	for _, ev := range st.Events {
		msgs = append(msgs, ev.Message)
	}
	events := strings.Join(msgs, "\n")
	for _, want := range []string{"started: v2 at 10 %", "step 2 of 3: v2 at 50 %", "step 3 of 3: v2 at 100 %", "promoted"} {
		if !strings.Contains(events, want) {
			t.Errorf("good's events lack %q:\n%s", want, events)
		}
	}
	res, err = s.api.Get(t.Context(), v1.KindRoute, "good")
	if err != nil {
		t.Fatal(err)
	}
	if tg := res.Route.Rules[0].Targets; tg[0].Weight != 0 || tg[1].Weight != 100 {
		t.Errorf("good's weights after the promotion: %+v; want v1 0, v2 100", tg)
	}
	good.waitQuiet(t, goodV1, "good's v1 out of the traffic")
	if total, failed := good.counts(); failed > 0 {
		t.Errorf("good: %d of %d requests failed", failed, total)
	}

	// trellis get route shows the status after the Route.
	out := s.mustCLI(t, "get", "route", "bad")
	for _, want := range []string{"kind: Route", "# canary (rule release): rolled-back, v2 at 0 %, v1 at 100 %", "# last decision", "rollback: ", "success rate", "rolled back at step 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("trellis get route bad lacks %q:\n%s", want, out)
		}
	}
	if _, err := s.api.Canary(t.Context(), "nosuch"); !client.IsNotFound(err) {
		t.Errorf("canary of a Route without one: got %v, want 404", err)
	}
	canaryInBrowser(t, s)
}

// canaryInBrowser opens bad's and good's Services pages on the dashboard
// and reads their canaries' state and events.
func canaryInBrowser(t *testing.T, s *server) {
	browser := chromiumPath(t)
	shots := artifactsDir(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(browser),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.IgnoreCertErrors,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	defer cancelAlloc()
	tab, cancelTab := chromedp.NewContext(allocCtx)
	defer cancelTab()
	// The first action runs on the tab's own context, whose end closes
	// the browser: the later steps' timeouts must not.
	if err := chromedp.Do(tab, chromedp.Navigate("https://"+s.addr+"/ui/#/services/bad")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		stepCtx, cancel := context.WithTimeout(tab, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(stepCtx, steps...); err != nil {
			shot(t, tab, shots, "canary-failed")
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(tab, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	do("log in",
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), s.admin+"\r"),
		chromedp.WaitVisible(chromedp.ID("canary-state")))
	shot(t, tab, shots, "canary-rolled-back")
	if got := text("#canary-state"); !strings.Contains(got, "rolled-back") || !strings.Contains(got, "v2 at 0 %") {
		t.Errorf("bad's canary on the dashboard reads %q", got)
	}
	if got := text("#canary"); !strings.Contains(got, "rollback") || !strings.Contains(got, "rolled back at step 1") {
		t.Errorf("bad's canary section lacks the rollback:\n%s", got)
	}
	do("open good's page",
		chromedp.Navigate("https://"+s.addr+"/ui/#/services/good"),
		chromedp.WaitVisible(chromedp.CSS(`#page[data-route="services/good"][data-loaded] #canary-state`)))
	shot(t, tab, shots, "canary-promoted")
	if got := text("#canary"); !strings.Contains(got, "promoted") || !strings.Contains(got, "step 3 of 3") {
		t.Errorf("good's canary section lacks the promotion:\n%s", got)
	}
}

// waitOK waits until the load has had 50 answers in a row without a
// failure.
func (l *canaryLoad) waitOK(t *testing.T, what string) {
	t.Helper()
	n0, f0 := -1, 0
	trellistest.Eventually(t, 10*time.Second, what, func() error {
		n, f := l.counts()
		switch {
		case n0 < 0 || f != f0:
			n0, f0 = n, f
			return fmt.Errorf("%d failed so far", f)
		case n < n0+50:
			return fmt.Errorf("%d answers without a failure, want 50", n-n0)
		}
		return nil
	})
}

// A canary whose v2 callers cannot reach, through the real binary: v2's
// proxy runs but its app never answers, so v2 is never healthy and the
// client's proxy answers 503 (no healthy endpoint) for v2's share, which
// v2's own proxy never sees. "down" has that v2 under load: it must be
// rolled back within two intervals, by its callers' figures, having
// failed at most the first step's share of the requests. "idle" has no
// instance and no traffic at all: it must be rolled back once v2 has had
// no healthy instance for two intervals, not before, nor much later.
func TestCanaryUnreachableVersionRollsBack(t *testing.T) {
	const interval = 3 * time.Second
	s := startServer(t, "--stats-interval", "1s")
	applyYAML(t, s, "kind: Service\nname: down\nspec: {protocol: http}\n---\nkind: Service\nname: idle\nspec: {protocol: http}\n")
	s.mustCLI(t, "intention", "allow", "client", "down")

	v1App := startCanaryApp(t, "v1", false)
	s.startProxy(t, proxyOpts{service: "down", appPort: v1App.port, extra: []string{"--version", "v1", "--stats-interval", "1s"}})
	// Nothing listens on v2's app port: its health check never passes.
	s.startProxy(t, proxyOpts{service: "down", appPort: trellistest.FreePort(t), extra: []string{"--version", "v2", "--stats-interval", "1s"}})
	downUp, downPort := loopAddr(t)
	s.startProxy(t, proxyOpts{service: "client", appPort: v1App.port, extra: []string{"--stats-interval", "1s"},
		upstreams: []string{fmt.Sprintf("down:%d", downPort)}})
	s.waitInstances(t, 10*time.Second, "down's versions registered", "down", 2)
	trellistest.Eventually(t, 10*time.Second, "down's v2 unhealthy, v1 healthy", func() error {
		ins, err := s.api.Instances(t.Context(), "down")
		if err != nil {
			return err
		}
		for _, in := range ins {
			if in.Healthy != (in.Version == "v1") {
				return fmt.Errorf("%s (%s) healthy: %v", in.ID, in.Version, in.Healthy)
			}
		}
		return nil
	})

	route := func(name string) string {
		return fmt.Sprintf(`kind: Route
name: %s
spec:
  rules:
    - name: release
      targets:
        - {version: v1, weight: 100}
        - {version: v2, weight: 0}
      canary: {version: v2, steps: [10, 50, 100], interval: %v, minSuccessRate: 99, maxP99: 500ms, minRequests: 5}
`, name, interval)
	}
	plain := route("down")[:strings.Index(route("down"), "      canary:")]
	applyYAML(t, s, plain)
	hc := &http.Client{Timeout: 5 * time.Second}
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	down := &canaryLoad{bodies: map[string]int{}}
	wg.Go(func() { down.run(ctx, hc, "http://"+downUp+"/", 20*time.Millisecond) })
	defer func() { stop(); wg.Wait() }()
	down.waitOK(t, "down's Route without a canary applied")
	total0, failed0 := down.counts()
	applyYAML(t, s, route("down")+"---\n"+route("idle"))

	wait := func(name string, within time.Duration) v1.CanaryStatus {
		t.Helper()
		var st v1.CanaryStatus
		trellistest.Eventually(t, within, name+"'s canary rolled back", func() error {
			var err error
			if st, err = s.api.Canary(t.Context(), name); err != nil {
				return err
			}
			if st.State != v1.CanaryRolledBack {
				return fmt.Errorf("state %s at step %d, last %+v", st.State, st.Step, st.Last)
			}
			return nil
		})
		return st
	}
	took := func(st v1.CanaryStatus) time.Duration {
		return st.Events[len(st.Events)-1].At.Sub(st.Events[0].At)
	}

	st := wait("down", 6*interval)
	last := st.Events[len(st.Events)-1].Message
	t.Logf("down: rolled back %v after the start: %s", took(st), st.Last.Reason)
	if !strings.HasPrefix(last, "rolled back at step 1 (10 %)") || !strings.Contains(last, "callers' success rate") {
		t.Errorf("down's last event %q; want a rollback at step 1 on the callers' success rate", last)
	}
	if took(st) > 2*interval {
		t.Errorf("down's canary rolled back %v after it started, want within two intervals (%v)", took(st), 2*interval)
	}
	if d := st.Last; d.Requests != 0 || d.CallerRequests < 5 || d.CallerSuccessRate == nil || *d.CallerSuccessRate >= 99 {
		t.Errorf("down's last decision %+v; want none of v2's own requests, and at least 5 of its callers' mostly failed", d)
	}
	res, err := s.api.Get(t.Context(), v1.KindRoute, "down")
	if err != nil {
		t.Fatal(err)
	}
	if tg := res.Route.Rules[0].Targets; tg[0].Weight != 100 || tg[1].Weight != 0 {
		t.Errorf("down's weights after the rollback: %+v; want v1 100, v2 0", tg)
	}
	// The rollback has reached the client's proxy when nothing fails.
	down.waitOK(t, "down's v2 out of the traffic")
	total, failed := down.counts()
	total, failed = total-total0, failed-failed0
	t.Logf("down: %d requests, %d failed", total, failed)
	if failed == 0 {
		t.Fatalf("down: none of %d requests failed: the canary never reached v2", total)
	}
	// The client's proxy draws each request's version at random: v2's
	// 10 % is a share in expectation, so allow three standard deviations
	// of the draw (about 13 requests in 200) before calling it exceeded.
	// A canary that reached its second step (50 %) would fail far more.
	if limit := 0.10*float64(total) + 3*math.Sqrt(0.10*0.90*float64(total)); float64(failed) > limit {
		t.Errorf("down: %d of %d requests failed (%.1f %%), over the first step's share of 10 %% (at most %.0f with the draw's spread)", failed, total, 100*float64(failed)/float64(total), limit)
	}

	st = wait("idle", 4*interval)
	t.Logf("idle: rolled back %v after the start: %s", took(st), st.Last.Reason)
	if took(st) < 2*interval || took(st) > 2*interval+2*time.Second {
		t.Errorf("idle's canary rolled back %v after it started, want two intervals (%v) and a pass or two", took(st), 2*interval)
	}
	if last := st.Events[len(st.Events)-1].Message; !strings.Contains(last, "v2 has had no healthy instance for 6s (2 intervals)") {
		t.Errorf("idle's last event %q; want the rollback for want of a healthy instance", last)
	}
	out := s.mustCLI(t, "get", "route", "down")
	if !strings.Contains(out, "; callers: requests ") {
		t.Errorf("trellis get route down lacks the callers' figures:\n%s", out)
	}
}
