//go:build linux

package integration

import (
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// An HTTP service with two versions behind a Route: the canary walk-through
// of App Mesh, through the real binary. Weights split the traffic, and a
// weight change under load fails no request.
func TestCanaryRoute(t *testing.T) {
	s := startServer(t)
	applyYAML(t, s, "kind: Service\nname: web\nspec: {protocol: http}\n")
	s.mustCLI(t, "intention", "allow", "client", "web")
	v1app, v2app := startApp(t, "v1"), startApp(t, "v2")
	s.startProxy(t, proxyOpts{service: "web", appPort: v1app.port, extra: []string{"--version", "v1"}})
	s.startProxy(t, proxyOpts{service: "web", appPort: v2app.port, extra: []string{"--version", "v2"}})
	up, upPort := loopAddr(t)
	caller := s.startProxy(t, proxyOpts{service: "client", appPort: v1app.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	s.waitInstances(t, 10*time.Second, "both versions registered", "web", 2)

	route := func(w1, w2 int) {
		applyYAML(t, s, fmt.Sprintf("kind: Route\nname: web\nspec:\n  rules:\n  - name: canary\n    targets:\n    - {version: v1, weight: %d}\n    - {version: v2, weight: %d}\n", w1, w2))
	}
	route(90, 10)
	client := &http.Client{Timeout: 5 * time.Second}
	fetch := func() (string, http.Header, error) {
		resp, err := client.Get("http://" + up + "/")
		if err != nil {
			return "", nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return "", nil, fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		return string(b), resp.Header, nil
	}
	// The route has reached the client proxy when its snapshot has the
	// rule (v2 answering proves nothing: without a route, v2 answers half
	// the requests).
	trellistest.Eventually(t, 10*time.Second, "route applied", func() error {
		if ok, err := snapshotHas(caller.admin, "canary"); !ok || err != nil {
			return fmt.Errorf("no canary rule in the client's snapshot (%v)", err)
		}
		return nil
	})
	n := map[string]int{}
	const total = 2000
	for range total {
		got, h, err := fetch()
		if err != nil {
			t.Fatal(err)
		}
		if h.Get("X-Trellis-Upstream-Service-Time") == "" {
			t.Fatal("response lacks the upstream service time")
		}
		n[got]++
	}
	if share := float64(n["v2"]) / total; math.Abs(share-0.10) > 0.03 {
		t.Fatalf("v2 share %.3f over %d requests (%v), want 0.10 +- 0.03", share, total, n)
	}

	// All traffic to v2, under load: no request fails.
	var failed, done atomic.Int64
	var errs sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, _, err := fetch(); err != nil {
					failed.Add(1)
					errs.Store(err.Error(), true)
				}
				done.Add(1)
			}
		}()
	}
	// The switch happens under load: wait until requests flow.
	trellistest.Eventually(t, 10*time.Second, "requests under way", func() error {
		if n := done.Load(); n < 50 {
			return fmt.Errorf("%d requests done", n)
		}
		return nil
	})
	route(0, 100)
	trellistest.Eventually(t, 10*time.Second, "all traffic on v2", func() error {
		for range 50 {
			if got, _, err := fetch(); err != nil || got != "v2" {
				return fmt.Errorf("got %q, %v", got, err)
			}
		}
		return nil
	})
	close(stop)
	wg.Wait()
	if failed.Load() > 0 {
		var msgs []string
		errs.Range(func(k, _ any) bool { msgs = append(msgs, k.(string)); return true })
		t.Fatalf("%d of %d requests failed during the weight change: %s", failed.Load(), done.Load(), strings.Join(msgs, "; "))
	}
}

// Intentions with HTTP permissions, through the real binary: only what a
// permission allows reaches the app, matched on the normalized path.
func TestL7Permissions(t *testing.T) {
	s := startServer(t)
	applyYAML(t, s, `kind: Mesh
name: default
spec: {defaultPolicy: deny}
---
kind: Service
name: web
spec: {protocol: http}
---
kind: Intention
name: client.web
spec:
  source: client
  destination: web
  permissions:
    - action: deny
      http: {pathPrefix: /public/secret}
    - action: allow
      http: {pathPrefix: /public/, methods: [GET]}
`)
	web := startApp(t, "web")
	s.startProxy(t, proxyOpts{service: "web", appPort: web.port})
	up, upPort := loopAddr(t)
	s.startProxy(t, proxyOpts{service: "client", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	do := func(method, path string) int {
		req, _ := http.NewRequest(method, "http://"+up+path, nil)
		req.URL.Opaque = path // send the path exactly as written
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	trellistest.Eventually(t, 10*time.Second, "allowed path served", func() error {
		if c := do("GET", "/public/page"); c != 200 {
			return fmt.Errorf("status %d", c)
		}
		return nil
	})
	web.mu.Lock()
	before := web.hits
	web.mu.Unlock()
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"POST", "/public/page", 403},
		{"GET", "/admin", 403},
		{"GET", "/public/secret/key", 403},
		{"GET", "/public/../admin", 403},
		{"GET", "/public/%2e%2e/admin", 403},
		{"GET", "/public/x/..%2fsecret", 400},
		{"GET", "//public//secret/key", 403},
	} {
		if got := do(tc.method, tc.path); got != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, got, tc.want)
		}
	}
	web.mu.Lock()
	after := web.hits
	web.mu.Unlock()
	if after != before {
		t.Fatalf("the app received %d refused requests", after-before)
	}
	if c := do("GET", "/public/./page"); c != 200 {
		t.Fatalf("normalized allowed path: %d", c)
	}
}

// A WebSocket through two sidecars: the upgrade is checked and authorized
// like any request, then messages flow both ways.
func TestWebSocketThroughMesh(t *testing.T) {
	s := startServer(t)
	applyYAML(t, s, `kind: Mesh
name: default
spec: {defaultPolicy: deny}
---
kind: Service
name: web
spec: {protocol: http}
---
kind: Intention
name: client.web
spec:
  source: client
  destination: web
  permissions:
    - action: allow
      http: {pathPrefix: /ws}
`)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var peerSeen atomic.Value
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(http.ResponseWriter, *http.Request) {})
	echo := websocket.Handler(func(ws *websocket.Conn) {
		peerSeen.Store(ws.Request().Header.Get("X-Forwarded-Client-Cert"))
		for {
			var msg string
			if websocket.Message.Receive(ws, &msg) != nil || websocket.Message.Send(ws, msg) != nil {
				return
			}
		}
	})
	mux.Handle("/ws", echo)
	var deniedHits atomic.Int64
	mux.HandleFunc("/denied", func(w http.ResponseWriter, r *http.Request) { deniedHits.Add(1); echo.ServeHTTP(w, r) })
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	appPort := l.Addr().(*net.TCPAddr).Port
	s.startProxy(t, proxyOpts{service: "web", appPort: appPort})
	up, upPort := loopAddr(t)
	s.startProxy(t, proxyOpts{service: "client", appPort: appPort, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})

	var ws *websocket.Conn
	trellistest.Eventually(t, 10*time.Second, "websocket dial through the mesh", func() error {
		var err error
		ws, err = websocket.Dial("ws://"+up+"/ws", "", "http://"+up)
		return err
	})
	defer ws.Close()
	for i := range 5 {
		msg := strings.Repeat(fmt.Sprint(i), 1000*(i+1))
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("echo %d: %d bytes, %v", i, len(got), err)
		}
	}
	if p, _ := peerSeen.Load().(string); !strings.Contains(p, "URI=spiffe://trellis.local/svc/client") {
		t.Errorf("app saw X-Forwarded-Client-Cert %q", p)
	}
	if _, err := websocket.Dial("ws://"+up+"/denied", "", "http://"+up); err == nil {
		t.Fatal("upgrade on a path no permission allows succeeded")
	}
	resp, err := http.DefaultClient.Do(&http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: up, Path: "/denied"},
		Header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}})
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("denied upgrade: %v %v, want 403", resp, err)
	}
	resp.Body.Close()
	if n := deniedHits.Load(); n != 0 {
		t.Fatalf("the app saw %d denied upgrades", n)
	}
}

// peakRSS is a process's high-water resident memory, from /proc.
func peakRSS(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// 100 MiB up and 100 MiB down through both sidecars at L7: bodies stream,
// and neither sidecar's memory grows with them.
func TestLargeBodiesStream(t *testing.T) {
	const size = 100 << 20
	s := startServer(t)
	applyYAML(t, s, "kind: Service\nname: web\nspec: {protocol: http}\n")
	s.mustCLI(t, "intention", "allow", "client", "web")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/up":
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprint(w, n)
		case "/down":
			w.Header().Set("Content-Length", strconv.Itoa(size))
			io.CopyN(w, zeros{}, size)
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	port := l.Addr().(*net.TCPAddr).Port
	web := s.startProxy(t, proxyOpts{service: "web", appPort: port})
	up, upPort := loopAddr(t)
	client := s.startProxy(t, proxyOpts{service: "client", appPort: port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})

	trellistest.Eventually(t, 10*time.Second, "route to web", func() error {
		resp, err := http.Post("http://"+up+"/up", "application/octet-stream", strings.NewReader("x"))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	baseline := max(peakRSS(t, web.pid()), peakRSS(t, client.pid()))

	resp, err := http.Post("http://"+up+"/up", "application/octet-stream", io.LimitReader(zeros{}, size))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != strconv.Itoa(size) {
		t.Fatalf("app received %s bytes, want %d", got, size)
	}
	resp, err = http.Get("http://" + up + "/down")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != size {
		t.Fatalf("downloaded %d bytes, %v", n, err)
	}
	for _, p := range []*sidecar{web, client} {
		peak := peakRSS(t, p.pid())
		t.Logf("%s: peak RSS %d MiB (before the transfers %d MiB)", p.name, peak>>20, baseline>>20)
		if grown := peak - baseline; grown > 40<<20 {
			t.Errorf("%s grew by %d MiB moving 100 MiB bodies: they are buffered", p.name, grown>>20)
		}
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
