//go:build linux

package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// peerApp answers every request with the caller identity its sidecar
// handed it (X-Forwarded-Client-Cert).
func peerApp(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "peer="+r.Header.Get("X-Forwarded-Client-Cert"))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// netGateway starts instance of the network gateway gw-b on ip, in
// network.
func netGateway(t *testing.T, s *server, token, instance, ip, network string) *sidecar {
	t.Helper()
	admin := trellistest.FreePort(t)
	return &sidecar{proc: start(t, instance, nil, "gateway", "--name", "gw-b", "--instance", instance,
		"--listen-addr", ip, "--public-addr", ip, "--network", network, "--drain-timeout", "5s",
		"--server", s.addr, "--ca-file", s.caFile, "--token-file", token,
		"--admin-port", strconv.Itoa(admin), "--log-level", "debug"), admin: fmt.Sprintf("127.0.0.1:%d", admin)}
}

func forwarded(t *testing.T, gw *sidecar) int {
	return max(0, authzMetric(t, gw.admin, "trellis_tcp_connections_total", `direction="network"`, `service="api"`, `result="ok"`))
}

// Two networks on loopback: web (network a, 127.0.0.2) calls api
// (network b, 127.0.0.3), which network b exposes through two network
// gateways (127.0.0.4, .5). The call goes through a gateway with web's
// identity checked end to end; stopping one gateway under load fails no
// request; stopping both gives a 503 that says why; starting one brings
// traffic back.
func TestNetworkGatewayLoopback(t *testing.T) {
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"} {
		if l, err := net.Listen("tcp", ip+":0"); err != nil {
			t.Skipf("loopback address %s: %v", ip, err)
		} else {
			l.Close()
		}
	}
	s := startServer(t)
	gwPort := trellistest.FreePort(t)
	f := t.TempDir() + "/mesh.yaml"
	if err := writeFile(f, fmt.Sprintf(`kind: Service
name: api
spec: {protocol: http}
---
kind: Intention
name: web.api
spec: {source: web, destination: api, action: allow}
---
kind: Gateway
name: gw-b
spec:
  listeners:
    - {port: %d, protocol: network, network: b}
`, gwPort)); err != nil {
		t.Fatal(err)
	}
	s.mustCLI(t, "apply", "-f", f)
	s.startProxy(t, proxyOpts{service: "api", appPort: peerApp(t), extra: []string{"--network", "b", "--public-addr", "127.0.0.3"}})
	token := s.tokenFile(t, "gw-b")
	gw1 := netGateway(t, s, token, "gw-b-1", "127.0.0.4", "b")
	gw2 := netGateway(t, s, token, "gw-b-2", "127.0.0.5", "b")
	// An instance of gw-b started in another network: it refuses to
	// serve network b's listener, and callers do not count it.
	stray := netGateway(t, s, token, "gw-b-stray", "127.0.0.6", "c")
	// One whose port is taken cannot serve: it registers unhealthy, and
	// callers leave it out (else the 503 below would not come).
	taken, err := net.Listen("tcp", fmt.Sprintf("127.0.0.7:%d", gwPort))
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	blocked := netGateway(t, s, token, "gw-b-blocked", "127.0.0.7", "b")
	gw1.waitReady(t)
	gw2.waitReady(t)
	stray.waitReady(t)
	blocked.waitReady(t)
	trellistest.Eventually(t, 10*time.Second, "gw-b-blocked registered unhealthy, the others healthy", func() error {
		ins, err := s.api.Instances(t.Context(), "gw-b")
		if err != nil {
			return err
		}
		got := map[string]bool{}
		for _, in := range ins {
			got[in.ID] = in.Healthy
		}
		if len(got) != 4 || got["gw-b-blocked"] || !got["gw-b-1"] || !got["gw-b-2"] {
			return fmt.Errorf("gateway health %v", got)
		}
		return nil
	})
	up, upPort := loopAddr(t)
	s.startProxy(t, proxyOpts{service: "web", appPort: peerApp(t), upstreams: []string{fmt.Sprintf("api:%d", upPort)},
		extra: []string{"--network", "a", "--public-addr", "127.0.0.2"}})

	client := &http.Client{Timeout: 5 * time.Second}
	trellistest.Eventually(t, 20*time.Second, "web calls api through network b's gateways", func() error {
		got, err := fetch(client, "http://"+up+"/", "")
		if err == nil && !strings.Contains(got, "URI=spiffe://trellis.local/svc/web") {
			err = fmt.Errorf("api saw %q, want web's SPIFFE ID", got)
		}
		if err == nil && forwarded(t, gw1)+forwarded(t, gw2) == 0 {
			err = fmt.Errorf("neither gateway counted a connection")
		}
		return err
	})
	trellistest.Eventually(t, 10*time.Second, "the stray gateway refuses the listener", func() error {
		if !strings.Contains(stray.logText(), `the listener serves network \"b\" and this gateway is in network \"c\"`) {
			return fmt.Errorf("no refusal in its log")
		}
		return nil
	})
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.6:%d", gwPort)); err == nil {
		c.Close()
		t.Error("the gateway in network c listens for network b")
	}
	out := s.mustCLI(t, "get", "proxies")
	if !strings.Contains(out, "api: via gateway network b") {
		t.Errorf("get proxies does not show web's path to api through network b:\n%s", out)
	}
	out = s.mustCLI(t, "get", "instances")
	if !regexp.MustCompile(`api-\S+\s+api\s+\S+\s+127\.0\.0\.3:\d+\s+b\s`).MatchString(out) {
		t.Errorf("get instances does not show api in network b:\n%s", out)
	}

	// Under load, stop the gateway that carries the connection: no
	// request fails.
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var load sync.WaitGroup
	for range 4 {
		load.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := fetch(client, "http://"+up+"/", ""); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					ok.Add(1)
				}
			}
		})
	}
	busy, other := gw1, gw2
	if forwarded(t, gw2) > 0 {
		busy, other = gw2, gw1
	}
	trellistest.Eventually(t, 10*time.Second, "load flowing", func() error {
		if ok.Load() < 50 {
			return fmt.Errorf("%d requests done", ok.Load())
		}
		return nil
	})
	before := forwarded(t, other)
	busy.kill(syscall.SIGTERM)
	after := ok.Load()
	trellistest.Eventually(t, 10*time.Second, "load going on through the other gateway", func() error {
		if ok.Load() < after+200 {
			return fmt.Errorf("%d requests since the stop", ok.Load()-after)
		}
		return nil
	})
	close(stop)
	load.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed while a gateway stopped; first: %v", n, n+ok.Load(), firstErr.Load())
	}
	if forwarded(t, other) <= before {
		t.Errorf("the remaining gateway forwarded no new connection (%d before, %d after)", before, forwarded(t, other))
	}

	// Both gone: a fast 503 that says why.
	other.kill(syscall.SIGTERM)
	trellistest.Eventually(t, 10*time.Second, "503 naming network b", func() error {
		start := time.Now()
		_, err := fetch(client, "http://"+up+"/", "")
		if err == nil || !strings.Contains(err.Error(), "status 503") || !strings.Contains(err.Error(), "network b: no healthy network gateway") {
			return fmt.Errorf("got %v", err)
		}
		if d := time.Since(start); d > time.Second {
			return fmt.Errorf("503 took %v", d)
		}
		return nil
	})

	// One back: traffic returns.
	gw1.run()
	trellistest.Eventually(t, 20*time.Second, "calls through the restarted gateway", func() error {
		_, err := fetch(client, "http://"+up+"/", "")
		return err
	})
}
