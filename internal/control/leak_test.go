package control

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/sidecar"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// roleRun is a role started by the test, and what its Run returned.
type roleRun struct {
	cancel context.CancelFunc
	done   chan error
}

func startRole(run func(context.Context) error) *roleRun {
	ctx, cancel := context.WithCancel(context.Background())
	r := &roleRun{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx) }()
	return r
}

// stop ends the role and waits for its Run to return.
func (r *roleRun) stop(t *testing.T, what string) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("%s: Run: %v", what, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: Run did not return", what)
	}
}

// Every role's Run waits for what it started: after a sidecar proxy's, a
// gateway's and the control plane's Run return, none of their goroutines
// is left (issue 19, item 10). Each role is checked on its own: the
// proxy's and the gateway's against what ran before they started (the
// control plane, still running, included), then the control plane's
// against nothing.
// mesh is a control plane with a service web (its app answering through
// serve) and a gateway edge routing a listener to it.
type mesh struct {
	srv      *Server
	server   *roleRun
	api      *client.Client
	dir      string
	gwPort   int
	web, gw  sidecar.Config
	stopApps func()
}

func startMesh(t *testing.T, serve http.HandlerFunc) *mesh {
	t.Helper()
	dir := t.TempDir()
	srv, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", Out: io.Discard, LeaseTTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{srv: srv, server: startRole(srv.Run), dir: dir, gwPort: trellistest.FreePort(t)}
	t.Cleanup(m.server.cancel)
	select {
	case <-srv.Ready():
	case err := <-m.server.done:
		t.Fatalf("control plane: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("control plane not ready")
	}
	m.api = adminClient(t, srv, dir)
	m.apply(t, m.gwPort)
	webToken, gwToken := serviceToken(t, m.api, dir, "web"), serviceToken(t, m.api, dir, "edge")
	app := &http.Server{Handler: serve}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appDone := make(chan struct{})
	go func() { defer close(appDone); app.Serve(appLn) }()
	m.stopApps = func() { app.Close(); <-appDone }
	m.web = sidecar.Config{Service: "web", Instance: "web-1", AppAddr: appLn.Addr().String(), TokenFile: webToken}
	m.gw = sidecar.Config{Service: "edge", Instance: "edge-1", Gateway: &sidecar.Gateway{ListenIP: "127.0.0.1"}, TokenFile: gwToken}
	for _, c := range []*sidecar.Config{&m.web, &m.gw} {
		c.Server, c.ServerCAFile = srv.Addr(), filepath.Join(dir, "ca.pem")
		c.StateDir = filepath.Join(dir, "state", c.Service)
		c.DrainTimeout = time.Second
	}
	return m
}

// apply sets the resources, with the gateway's listener on port.
func (m *mesh) apply(t *testing.T, port int) {
	t.Helper()
	if _, err := m.api.Apply(t.Context(), []v1.Resource{
		{Kind: v1.KindService, Name: "web", Service: &v1.ServiceSpec{Protocol: v1.ProtocolHTTP, Port: 80}},
		{Kind: v1.KindIntention, Name: "edge-web", Intention: &v1.IntentionSpec{Source: "edge", Destination: "web", Action: v1.Allow}},
		{Kind: v1.KindGateway, Name: "edge", Gateway: &v1.GatewaySpec{Listeners: []v1.GatewayListener{{
			Port: port, Protocol: v1.GatewayHTTP,
			Routes: []v1.GatewayRoute{{PathPrefix: "/", Service: "web"}},
		}}}},
	}); err != nil {
		t.Fatal(err)
	}
}

func answerWeb(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "web") }

// Every role's Run waits for what it started: after a sidecar proxy's, a
// gateway's and the control plane's Run return, none of their goroutines
// is left (issue 19, item 10). The proxy's and the gateway's are checked
// against what ran before they started (the control plane, still
// running), the control plane's against nothing; and at once, for
// goroutines of their own packages (checkNoneOwned), as goleak gives
// goroutines a moment to end.
func TestRolesLeaveNoGoroutine(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a control plane, a proxy and a gateway")
	}
	defer goleak.VerifyNone(t) // no ignores: nothing of a library outlives the roles either
	m := startMesh(t, answerWeb)
	defer m.stopApps()
	// A first registration starts what the control plane then keeps for
	// its whole run (the store client's lease keep-alive loops, and the
	// embedded etcd's side of them): run a proxy once before taking the
	// control plane's goroutines as the baseline.
	runProxy(t, m.web).stop(t, "first proxy")
	serverOnly := goleak.IgnoreCurrent()

	web := runProxy(t, m.web)
	gw := runProxy(t, m.gw)
	// Traffic through both: the gateway's pool dials the proxy.
	url := fmt.Sprintf("http://127.0.0.1:%d/", m.gwPort)
	trellistest.Eventually(t, 20*time.Second, "a request through the gateway", func() error {
		return getOK(url)
	})

	gw.stop(t, "gateway")
	web.stop(t, "proxy")
	checkNoneOwned(t, "gateway and proxy", dataPlane...)
	// The control plane's side of their streams ends with them.
	goleak.VerifyNone(t, serverOnly)

	m.server.stop(t, "control plane")
	checkNoneOwned(t, "control plane", "/trellis/internal/")
}

// dataPlane are the packages of the proxy and gateway roles.
var dataPlane = []string{"/internal/sidecar.", "/internal/proxy/", "/internal/certs.", "/internal/health."}

// A listener the Gateway resource loses is drained on its own; the
// gateway's Run waits for that drain too, even with a request still in
// flight on it.
func TestGatewayRunWaitsForListenerDrains(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a control plane, a proxy and a gateway")
	}
	defer goleak.VerifyNone(t) // no ignores: nothing of a library outlives the roles either
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	m := startMesh(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, "web")
	})
	defer m.stopApps()
	defer close(release)
	// Long enough that the old listener's drain outlives a Run that
	// would not wait for it (Run's own drain has nothing left to do).
	m.gw.DrainTimeout = 3 * time.Second
	web := runProxy(t, m.web)
	gw := runProxy(t, m.gw)
	url := fmt.Sprintf("http://127.0.0.1:%d/", m.gwPort)
	trellistest.Eventually(t, 20*time.Second, "a request through the gateway", func() error {
		return getOK(url)
	})
	// A request in flight, and a connection still sending its head: the
	// old listener's drain waits for them.
	slow := make(chan error, 1)
	go func() { slow <- getOK(url + "slow") }()
	<-arrived
	head, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", m.gwPort))
	if err != nil {
		t.Fatal(err)
	}
	defer head.Close()
	io.WriteString(head, "GET / HTTP/1.1\r\nHost: edge\r\n")
	// The listener moves: the old one closes and drains its request.
	m.apply(t, trellistest.FreePort(t))
	trellistest.Eventually(t, 20*time.Second, "the old listener closed", func() error {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", m.gwPort))
		if err == nil {
			c.Close()
			return fmt.Errorf("still accepting")
		}
		return nil
	})
	gw.stop(t, "gateway")
	checkNoneOwned(t, "gateway", "/internal/sidecar.(*gateway)")
	<-slow // cut by the gateway's drain, or answered: either way over
	web.stop(t, "proxy")
	m.server.stop(t, "control plane")
}

// checkNoneOwned fails the test if a goroutine runs code of a package
// matching one of pkgs (other than the test's own goroutines), right
// after a role's Run returned: unlike goleak, which gives goroutines a
// second or two to end, it shows that Run waited for its own. A goroutine
// that has just told its owner it is done may still be on its way out,
// so one is given 50 ms to go: a goroutine still at work after its Run
// returned stays far longer.
func checkNoneOwned(t *testing.T, role string, pkgs ...string) {
	t.Helper()
	owned := func() []string {
		var found []string
		buf := make([]byte, 1<<22)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "/internal/control.startRole") || strings.Contains(g, "testing.tRunner") ||
				strings.Contains(g, "/internal/control.startMesh") {
				continue // the test's own
			}
			if role != "control plane" && strings.Contains(g, "/internal/control.") {
				// The control plane's, still running: its API server
				// accepts through netconn's listener, whose frame
				// would otherwise count as the data plane's.
				continue
			}
			for _, p := range pkgs {
				if strings.Contains(g, p) {
					found = append(found, g)
					break
				}
			}
		}
		return found
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	for {
		found := owned()
		if len(found) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, g := range found {
				t.Errorf("after the %s's Run returned, a goroutine of theirs runs:\n%s", role, g)
			}
			return
		}
		time.Sleep(time.Millisecond)
	}
}

func adminClient(t *testing.T, srv *Server, dir string) *client.Client {
	t.Helper()
	token, err := os.ReadFile(filepath.Join(dir, AdminTokenFileName))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	api, err := client.New(client.Config{Addr: srv.Addr(), Token: strings.TrimSpace(string(token)), CAPEM: caPEM})
	if err != nil {
		t.Fatal(err)
	}
	return api
}

func serviceToken(t *testing.T, api *client.Client, dir, service string) string {
	t.Helper()
	tok, err := api.CreateToken(t.Context(), v1.TokenRequest{Services: []string{service}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "token-"+service)
	if err := os.WriteFile(path, []byte(tok.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runProxy runs a sidecar proxy or gateway until the test stops it, and
// waits until it is ready.
func runProxy(t *testing.T, cfg sidecar.Config) *roleRun {
	t.Helper()
	cfg.Registry = prometheus.NewRegistry()
	ready := make(chan struct{})
	cfg.OnReady = func(string, string) { close(ready) }
	p, err := sidecar.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := startRole(p.Run)
	t.Cleanup(r.cancel)
	select {
	case <-ready:
	case err := <-r.done:
		t.Fatalf("%s: Run: %v", cfg.Service, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s not ready", cfg.Service)
	}
	return r
}

func getOK(url string) error {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "web" {
		return fmt.Errorf("got %d %q", resp.StatusCode, b)
	}
	return nil
}

// The control plane's Run waits for the handlers of the proxy streams
// still open when it stops, and for the goroutines each stream started:
// none runs on (writing to a closed store) after Run has returned.
func TestServerRunWaitsForStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a control plane and a proxy")
	}
	defer goleak.VerifyNone(t) // no ignores: nothing of a library outlives the roles either
	m := startMesh(t, answerWeb)
	defer m.stopApps()
	web := runProxy(t, m.web)
	m.server.stop(t, "control plane")
	checkNoneOwned(t, "control plane", "/internal/control.", "/internal/store.")
	web.stop(t, "proxy")
}
