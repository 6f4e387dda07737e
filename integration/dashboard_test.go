//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// chromiumPath finds the browser the dashboard test drives. CI installs
// Debian's chromium (.ci/run); there, its absence fails the test.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("TRELLIS_REQUIRE_NETNS") != "" {
		t.Fatal("no chromium on PATH, and TRELLIS_REQUIRE_NETNS is set (CI): install Debian's chromium")
	}
	t.Skip("no chromium on PATH: the dashboard test needs a real browser")
	return ""
}

// artifactsDir is where the screenshots go: $TRELLIS_TEST_ARTIFACTS/<test>
// when set, else a temporary folder.
func artifactsDir(t *testing.T) string {
	t.Helper()
	root := os.Getenv("TRELLIS_TEST_ARTIFACTS")
	if root == "" {
		return t.TempDir()
	}
	dir := filepath.Join(root, t.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pageLog is what the browser tab did: every request it made, and the
// errors it reported (uncaught exceptions, Content-Security-Policy
// violations).
type pageLog struct {
	mu       sync.Mutex
	requests []string
	errors   []string
}

func (l *pageLog) listen(ev any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		l.requests = append(l.requests, ev.Request.Method+" "+ev.Request.URL)
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg := d.Text
		if d.Exception != nil && d.Exception.Description != "" {
			msg += " " + d.Exception.Description
		}
		l.errors = append(l.errors, "exception: "+msg)
	case *log.EventEntryAdded:
		if ev.Entry.Source == log.EntrySourceSecurity || strings.Contains(ev.Entry.Text, "Content Security Policy") {
			l.errors = append(l.errors, "security: "+ev.Entry.Text)
		}
	}
}

func (l *pageLog) snapshot() (requests, errors []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.requests...), append([]string(nil), l.errors...)
}

// The dashboard in a real browser against `trellis up examples/greeter`:
// log in as admin, see the three services and their node, deny
// greeter->name on the Intentions page and see the greeter fail, allow it
// again; log in as a viewer, whose write the server refuses; no request
// leaves the page's origin; a screenshot of every page.
func TestDashboardInBrowser(t *testing.T) {
	browser := chromiumPath(t)
	u := startUp(t, "../examples/greeter", []int{7700, 8080, 9000, 9001, 9002, 9191, 9192})
	// A test that stops half way still stops the mesh by Ctrl-C, which
	// ends the example's apps too (startUp's cleanup kills only trellis
	// up's own process group).
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			syscall.Kill(u.cmd.Process.Pid, syscall.SIGINT)
			select {
			case <-u.exited:
			case <-time.After(20 * time.Second):
			}
		}
	})
	// The example's services are TCP; greeting is made HTTP before the
	// greeter first calls it (its app keeps that connection), so that the
	// Topology page has requests to show on greeter->greeting.
	httpGreeting := filepath.Join(t.TempDir(), "greeting.yaml")
	if err := writeFile(httpGreeting, "kind: Service\nname: greeting\nspec: {protocol: http}\n"); err != nil {
		t.Fatal(err)
	}
	if out, code := runCLI(t, u.env, "apply", "-f", httpGreeting); code != 0 {
		t.Fatalf("apply greeting as http: %d %s", code, out)
	}
	const origin = "https://127.0.0.1:7700"
	// Each example has its data dir, one here: ~/.trellis/up/NAME-HASH.
	tokenFiles, _ := filepath.Glob(filepath.Join(u.home, ".trellis", "up", "*", "admin-token"))
	if len(tokenFiles) != 1 {
		t.Fatalf("admin token files %v, want one", tokenFiles)
	}
	adminToken, err := os.ReadFile(tokenFiles[0])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(u.summary, origin+"/ui/") {
		t.Errorf("trellis up does not say where the dashboard is:\n%s", u.summary)
	}
	shots := artifactsDir(t)
	t.Logf("screenshots in %s", shots)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The flags for a root user in a container, and no traffic of the
	// browser's own. The server's certificate is the mesh CA's, which
	// this fresh profile does not trust.
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(browser),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.IgnoreCertErrors,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	defer cancelAlloc()
	var plog pageLog
	tab, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithListener(plog.listen))
	defer cancelTab()

	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		stepCtx, cancel := context.WithTimeout(tab, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(stepCtx, steps...); err != nil {
			shot(t, tab, shots, "failed")
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
	loaded := func(route string) chromedp.Action[chromedp.Void] {
		return chromedp.WaitVisible(chromedp.CSS(`#page[data-route="` + route + `"][data-loaded]`))
	}
	open := func(route string) {
		t.Helper()
		do("open "+route, chromedp.Click(chromedp.CSS(`#nav a[href="#/`+route+`"]`)), loaded(route))
	}
	// login logs in and waits for the page the address names.
	login := func(token, route string) {
		t.Helper()
		// By keyboard: the token, then Enter submits the form.
		do("log in",
			chromedp.WaitVisible(chromedp.ID("token")),
			chromedp.SendKeys(chromedp.ID("token"), strings.TrimSpace(token)+"\r"),
			loaded(route))
	}

	// The first action runs on the tab's own context, whose end closes
	// the browser: the later steps' timeouts must not.
	if err := chromedp.Do(tab, chromedp.Navigate(origin+"/ui/")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	do("see the login form", chromedp.WaitVisible(chromedp.ID("token")))
	shot(t, tab, shots, "login")
	login(string(adminToken), "overview")
	if got := text("#role"); !strings.HasPrefix(got, "Admin") {
		t.Errorf("role shown %q, want Admin", got)
	}
	counts := text("#counts")
	if !regexp.MustCompile(`(?s)4\s*Services`).MatchString(counts) {
		t.Errorf("overview counts %q, want 4 services (greeter, greeting, name and the client)", counts)
	}
	shot(t, tab, shots, "overview")

	open("services")
	services := text("#page")
	for _, s := range []string{"greeter", "greeting", "name"} {
		if !strings.Contains(services, s) {
			t.Errorf("services page lacks %s:\n%s", s, services)
		}
	}
	shot(t, tab, shots, "services")
	do("open service greeter", chromedp.Click(chromedp.CSS(`#page a[href="#/services/greeter"]`)), loaded("services/greeter"))
	if got := text("#page"); !strings.Contains(got, "greeter-1") || !strings.Contains(got, "healthy") {
		t.Errorf("greeter's page lacks its healthy instance greeter-1:\n%s", got)
	}
	shot(t, tab, shots, "service-greeter")

	open("nodes")
	host, _ := os.Hostname()
	nodes := text("#page")
	if !strings.Contains(nodes, host) {
		t.Errorf("nodes page does not name this host %q:\n%s", host, nodes)
	}
	for _, s := range []string{"greeter-1", "greeting-1", "name-1"} {
		if !strings.Contains(nodes, s) {
			t.Errorf("nodes page lacks proxy %s:\n%s", s, nodes)
		}
	}
	shot(t, tab, shots, "nodes")
	// Each proxy reported its node and its certificate's expiry.
	var proxies []struct {
		Instance      string     `json:"instance"`
		Node          string     `json:"node"`
		SVIDExpiresAt *time.Time `json:"svidExpiresAt"`
	}
	out, _ := runCLI(t, u.env, "get", "proxies", "-o", "json")
	if err := json.Unmarshal([]byte(out), &proxies); err != nil || len(proxies) != 4 {
		t.Fatalf("get proxies: %v, %s", err, out)
	}
	for _, p := range proxies {
		if p.Node != host || p.SVIDExpiresAt == nil || time.Until(*p.SVIDExpiresAt) < 23*time.Hour {
			t.Errorf("proxy %s reports node %q and SVID expiry %v, want %q and about 24 h ahead", p.Instance, p.Node, p.SVIDExpiresAt, host)
		}
	}

	// Deny greeter -> name: change, confirm, and the greeter fails.
	open("intentions")
	shot(t, tab, shots, "intentions")
	do("deny greeter->name",
		chromedp.Click(chromedp.ID("set-deny-greeter-name")),
		chromedp.WaitVisible(chromedp.ID("confirm")))
	shot(t, tab, shots, "intentions-confirm")
	do("confirm the deny", chromedp.Click(chromedp.ID("confirm")), chromedp.WaitVisible(chromedp.ID("set-allow-greeter-name")))
	trellistest.Eventually(t, 10*time.Second, "greeter fails after the dashboard denied greeter->name", func() error {
		if got, err := get("127.0.0.1:8080"); err == nil {
			return fmt.Errorf("still answers %q", got)
		}
		return nil
	})
	shot(t, tab, shots, "intentions-denied")
	do("allow greeter->name again",
		chromedp.Click(chromedp.ID("set-allow-greeter-name")),
		chromedp.WaitVisible(chromedp.ID("confirm")),
		chromedp.Click(chromedp.ID("confirm")),
		chromedp.WaitVisible(chromedp.ID("set-deny-greeter-name")))
	trellistest.Eventually(t, 10*time.Second, "greeter answers after the dashboard allowed greeter->name", func() error {
		_, err := get("127.0.0.1:8080")
		return err
	})

	// A Route's weights: edited, previewed as the Route it will be,
	// confirmed, applied. (name is a tcp service here: the Route is
	// stored but steers nothing.)
	route := filepath.Join(t.TempDir(), "route.yaml")
	if err := writeFile(route, "kind: Route\nname: name\nspec:\n  rules:\n    - name: split\n      targets:\n        - {version: v1, weight: 100}\n        - {version: v2, weight: 0}\n"); err != nil {
		t.Fatal(err)
	}
	if out, code := runCLI(t, u.env, "apply", "-f", route); code != 0 {
		t.Fatalf("apply route: %d %s", code, out)
	}
	open("services")
	do("edit the Route of name",
		chromedp.Click(chromedp.CSS(`#page a[href="#/services/name"]`)), loaded("services/name"),
		chromedp.SetValue(chromedp.ID("weight-0-0"), "90"),
		chromedp.SetValue(chromedp.ID("weight-0-1"), "10"),
		chromedp.Click(chromedp.ID("preview-route")),
		chromedp.WaitVisible(chromedp.ID("confirm")))
	if got := text(".confirm"); !strings.Contains(got, "split: v1 100 → 90") || !strings.Contains(got, `"weight": 10`) {
		t.Errorf("the Route preview reads:\n%s", got)
	}
	shot(t, tab, shots, "route-preview")
	do("apply the Route", chromedp.Click(chromedp.ID("confirm")))
	trellistest.Eventually(t, 10*time.Second, "the Route applied from the dashboard", func() error {
		out, _ := runCLI(t, u.env, "get", "route", "name", "-o", "json")
		if !regexp.MustCompile(`"version":\s*"v1",\s*"weight":\s*90`).MatchString(out) {
			return fmt.Errorf("route reads %s", out)
		}
		return nil
	})

	// A Gateway (no gateway proxy runs for it here): its listeners,
	// routes and pass-through targets with their instances' health.
	gwFile := filepath.Join(t.TempDir(), "gateway.yaml")
	if err := writeFile(gwFile, `kind: Gateway
name: edge
spec:
  listeners:
    - port: 18000
      protocol: http
      routes:
        - {pathPrefix: /greet/, service: greeter, rewritePrefix: /}
    - port: 18443
      protocol: tls-passthrough
      targets:
        - {sni: greet.example.com, service: greeter}
      defaultService: name
`); err != nil {
		t.Fatal(err)
	}
	if out, code := runCLI(t, u.env, "apply", "-f", gwFile); code != 0 {
		t.Fatalf("apply gateway: %d %s", code, out)
	}
	open("gateways")
	gw := text("#page")
	for _, want := range []string{"edge", "Port 18000", "/greet/", "Port 18443", "greet.example.com", "1 of 1 healthy", "No gateway proxy connected"} {
		if !strings.Contains(gw, want) {
			t.Errorf("gateways page lacks %q:\n%s", want, gw)
		}
	}
	shot(t, tab, shots, "gateways")
	// Traffic through the greeter until the Topology page draws it.
	// greeting is HTTP (above): its edge carries requests. name is TCP,
	// and the greeter's app keeps one connection to it open: a TCP
	// connection's bytes are counted when it closes, so that edge is
	// drawn (it had connections) without a rate. client->greeter is TCP
	// with a connection per call: its bytes show. Summaries come every
	// 5 s and an edge's first interval is not counted: this takes two or
	// three intervals.
	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	load.Go(func() {
		pace := time.NewTicker(100 * time.Millisecond)
		defer pace.Stop()
		for {
			get("127.0.0.1:8080")
			select {
			case <-loadCtx.Done():
				return
			case <-pace.C:
			}
		}
	})
	open("topology")
	trellistest.Eventually(t, 60*time.Second, "topology shows greeter->greeting, greeter->name and client->greeter with traffic", func() error {
		// Each edge drawn: its ID, requests/s and bytes/s.
		drawn, err := chromedp.Run(tab, chromedp.Evaluate[map[string][2]float64](`Object.fromEntries([...document.querySelectorAll("#topology-graph g.edge")].map(
			(e) => [e.id, [Number(e.getAttribute("data-rps")), Number(e.getAttribute("data-bps"))]]))`))
		if err != nil {
			return err
		}
		g, gok := drawn["edge-greeter--greeting"]
		_, nok := drawn["edge-greeter--name"]
		c, cok := drawn["edge-client--greeter"]
		if !gok || !nok || !cok || g[0] == 0 || c[1] == 0 {
			return fmt.Errorf("edges drawn (requests/s, bytes/s): %v", drawn)
		}
		return nil
	})
	stopLoad()
	load.Wait()
	if got := text("#topology-edges"); !strings.Contains(got, "greeter") || !strings.Contains(got, "greeting") || !strings.Contains(got, "name") {
		t.Errorf("topology's edge table lacks greeter's edges:\n%s", got)
	}
	shot(t, tab, shots, "topology")
	do("log out", chromedp.Click(chromedp.ID("logout")), chromedp.WaitVisible(chromedp.ID("token")))

	// A viewer: the controls are off, and a write the page makes anyway
	// (with the session's CSRF token, from the page's own origin) is
	// refused by the server.
	out, code := runCLI(t, u.env, "token", "create", "--viewer", "--description", "dashboard test")
	viewer := regexp.MustCompile(`trellis_[A-Za-z0-9_-]+`).FindString(out)
	if code != 0 || viewer == "" {
		t.Fatalf("token create --viewer: exit %d: %s", code, out)
	}
	if out, _ := runCLI(t, u.env, "token", "list"); !strings.Contains(out, "viewer") {
		t.Errorf("token list does not show the viewer token:\n%s", out)
	}
	login(viewer, "topology") // the page it was on
	if got := text("#role"); !strings.Contains(got, "read-only") {
		t.Errorf("role shown %q, want a read-only viewer", got)
	}
	open("intentions")
	disabled, err := chromedp.Run(tab, chromedp.Evaluate[bool](`document.getElementById("set-deny-greeter-name").disabled`))
	if err != nil || !disabled {
		t.Errorf("a viewer's Deny button is enabled (%v)", err)
	}
	shot(t, tab, shots, "viewer-intentions")
	type answer struct {
		Status int    `json:"status"`
		Body   string `json:"body"`
	}
	write := `(async () => {
		const s = await (await fetch("/ui/session")).json();
		const r = await fetch("/v1/resources", {method: "POST", headers: {"Content-Type": "application/json", "X-Trellis-Csrf": s.csrf},
			body: JSON.stringify([{kind: "Intention", name: "greeter.name", spec: {source: "greeter", destination: "name", action: "deny"}}])});
		return {status: r.status, body: await r.text()};
	})()`
	got, err := chromedp.Run(tab, chromedp.Evaluate[answer](write, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != 403 || !strings.Contains(got.Body, "read-only") {
		t.Errorf("a viewer's write answered %d %s, want 403 saying read-only", got.Status, got.Body)
	}
	del := strings.Replace(write, `method: "POST"`, `method: "DELETE"`, 1)
	del = strings.Replace(del, `"/v1/resources"`, `"/v1/resources/Intention/greeter.name"`, 1)
	if got, err := chromedp.Run(tab, chromedp.Evaluate[answer](del, chromedp.EvalAwaitPromise)); err != nil || got.Status != 403 {
		t.Errorf("a viewer's delete answered %+v, %v, want 403", got, err)
	}
	if out, _ := runCLI(t, u.env, "get", "intentions"); !regexp.MustCompile(`greeter\.name\s+greeter\s+name\s+allow`).MatchString(out) {
		t.Errorf("after the viewer's refused writes, intentions read:\n%s", out)
	}
	if _, err := get("127.0.0.1:8080"); err != nil {
		t.Errorf("greeter after the viewer's refused writes: %v", err)
	}

	requests, errs := plog.snapshot()
	if len(requests) < 10 {
		t.Errorf("recorded only %d requests: %v", len(requests), requests)
	}
	for _, r := range requests {
		_, url, _ := strings.Cut(r, " ")
		if !strings.HasPrefix(url, origin+"/") {
			t.Errorf("the page made a request outside its origin: %s", r)
		}
	}
	for _, e := range errs {
		t.Errorf("the page reported: %s", e)
	}
	b, _ := json.MarshalIndent(requests, "", "  ")
	_ = os.WriteFile(filepath.Join(shots, "requests.json"), b, 0o644)
	stopped = true
	u.stop(t)
}

// shot writes a full-page screenshot of the tab to dir/name.png.
func shot(t *testing.T, tab context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(tab, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot %s: %v", name, err)
		return
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Error(err)
	}
}
