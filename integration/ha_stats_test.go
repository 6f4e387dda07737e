//go:build linux

package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// Two servers on one etcd, the proxies split between them, load through
// both halves: /v1/stats on either server shows the whole mesh's figures
// (issue 21, item 1). Servers share summaries directly; a push without a
// server's certificate is refused; a frozen server does not stall the
// other.
func TestHAStatsWholeMesh(t *testing.T) {
	endpoint := startEtcd(t)
	interval := []string{"--stats-interval", "1s"}
	a := startServer(t, append([]string{"--etcd-endpoints", endpoint}, interval...)...)
	addrB := fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))
	dirB := t.TempDir()
	procB := start(t, "server-b", nil, append([]string{"server", "--data-dir", dirB, "--listen", addrB, "--etcd-endpoints", endpoint,
		"--store-secret-file", filepath.Join(a.dataDir, "store-secret"), "--log-level", "debug"}, interval...)...)
	caPEM, _ := os.ReadFile(a.caFile)
	apiB, _ := client.New(client.Config{Addr: addrB, Token: a.admin, CAPEM: caPEM})
	b := &server{proc: procB, addr: addrB, dataDir: dirB, caFile: a.caFile, admin: a.admin, api: apiB}
	trellistest.Eventually(t, 30*time.Second, "server b answers", func() error {
		_, err := apiB.Services(t.Context())
		return err
	})

	applyYAML(t, a, "kind: Service\nname: web\nspec: {protocol: http}\n")
	a.mustCLI(t, "intention", "allow", "client", "web")
	a.mustCLI(t, "intention", "allow", "caller", "web")
	web := startApp(t, "web")
	proxyFlags := []string{"--stats-interval", "1s"}
	a.startProxy(t, proxyOpts{service: "web", appPort: web.port, extra: proxyFlags})
	// caller's proxy on a, client's on b: each server holds one edge's
	// summaries, and a holds web's.
	upA, portA := loopAddr(t)
	a.startProxy(t, proxyOpts{service: "caller", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", portA)}, extra: proxyFlags})
	upB, portB := loopAddr(t)
	b.startProxy(t, proxyOpts{service: "client", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", portB)}, extra: proxyFlags})
	a.waitInstances(t, 10*time.Second, "web registered", "web", 1)

	// 20 requests a second through each half.
	const perSecond = 20
	ctx, stop := context.WithCancel(t.Context())
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		loadErr error
	)
	hc := &http.Client{Timeout: 5 * time.Second}
	for _, up := range []string{upA, upB} {
		wg.Go(func() {
			tick := time.NewTicker(time.Second / perSecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				resp, err := hc.Get("http://" + up + "/")
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil && ctx.Err() == nil {
					mu.Lock()
					loadErr = err
					mu.Unlock()
				}
			}
		})
	}
	defer func() { stop(); wg.Wait() }()

	for name, s := range map[string]*server{"a": a, "b": b} {
		trellistest.Eventually(t, 40*time.Second, "server "+name+" shows the whole mesh", func() error {
			st, err := s.api.Stats(t.Context(), time.Minute, "")
			if err != nil {
				return err
			}
			var web float64
			for _, svc := range st.Services {
				if svc.Name == "web" {
					web = svc.RequestsPerSecond
				}
			}
			for _, src := range []string{"caller", "client"} {
				e := findEdge(st, src, "web")
				if e == nil || e.Requests < 8*perSecond {
					return fmt.Errorf("edge %s->web: %+v, want 8 s of load", src, e)
				}
				if math.Abs(e.RequestsPerSecond-perSecond)/perSecond > 0.10 {
					return fmt.Errorf("edge %s->web: %.2f requests/s, want %d within 10%%", src, e.RequestsPerSecond, perSecond)
				}
			}
			if math.Abs(web-2*perSecond)/(2*perSecond) > 0.10 {
				return fmt.Errorf("service web: %.2f requests/s, want %d within 10%%", web, 2*perSecond)
			}
			t.Logf("server %s: web %.2f requests/s, caller->web %.2f, client->web %.2f", name, web,
				findEdge(st, "caller", "web").RequestsPerSecond, findEdge(st, "client", "web").RequestsPerSecond)
			return nil
		})
	}
	mu.Lock()
	if loadErr != nil {
		t.Fatalf("load: %v", loadErr)
	}
	mu.Unlock()

	// A push with the admin token but no server certificate is refused.
	req, _ := http.NewRequest(http.MethodPost, "https://"+b.addr+"/v1/peer/summaries",
		bytes.NewReader([]byte(`{"origin":"s-forged","intervalMs":1000,"slots":[]}`)))
	req.Header.Set("Authorization", "Bearer "+b.admin)
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: clientFor(t, b, "").TLSConfig()}, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("forged push: got %d %s, want 401", resp.StatusCode, body)
	}

	// b freezes (SIGSTOP: its port accepts, nothing answers). a goes on:
	// it answers, its own proxies' figures grow, and its pushes to b
	// time out on their own.
	if err := syscall.Kill(procB.pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(procB.pid(), syscall.SIGCONT)
	edgeRequests := func(s *server, src string) (uint64, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		st, err := s.api.Stats(ctx, time.Minute, "")
		if err != nil {
			return 0, err
		}
		if e := findEdge(st, src, "web"); e != nil {
			return e.Requests, nil
		}
		return 0, fmt.Errorf("no edge %s->web", src)
	}
	before, err := edgeRequests(a, "caller")
	if err != nil {
		t.Fatal(err)
	}
	failed := regexp.MustCompile(`trellis_control_peer_pushes_total\{result="failed"\} (\d+)`)
	trellistest.Eventually(t, 20*time.Second, "a answers, and counts, with b frozen", func() error {
		n, err := edgeRequests(a, "caller")
		if err != nil {
			return err
		}
		if n < before+3*perSecond {
			return fmt.Errorf("caller->web at %d requests, want %d or more", n, before+3*perSecond)
		}
		_, metrics := apiGetRaw(t, a, "/metrics")
		m := failed.FindStringSubmatch(metrics)
		if m == nil {
			return fmt.Errorf("no failed push to b yet")
		}
		if v, _ := strconv.Atoi(m[1]); v == 0 {
			return fmt.Errorf("no failed push to b yet")
		}
		return nil
	})
	// b thaws and catches up with a's proxies.
	syscall.Kill(procB.pid(), syscall.SIGCONT)
	nb, _ := edgeRequests(b, "caller")
	trellistest.Eventually(t, 20*time.Second, "b counts a's proxies again", func() error {
		n, err := edgeRequests(b, "caller")
		if err == nil && n < nb+3*perSecond {
			err = fmt.Errorf("caller->web at %d requests on b, want %d or more", n, nb+3*perSecond)
		}
		return err
	})
}

// apiGetRaw is a GET with the admin token, its status and body.
func apiGetRaw(t *testing.T, s *server, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+s.addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+s.admin)
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: clientFor(t, s, "").TLSConfig()}, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
