//go:build linux

package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// TestTransparentProxy runs two hosts: web, whose outbound and inbound
// traffic `trellis redirect` sends through its proxy, as ECS does for a
// task with a proxyConfiguration, and backend, whose app listens on its
// loopback only, so that reaching it proves the path went through the mesh.
// The web app calls backend at backend's own address, and by name at an
// address that is no instance, without knowing of any proxy; everything else
// it calls is refused, and nothing reaches it around the mesh.
func TestTransparentProxy(t *testing.T) {
	needNetns(t, "iptables", "iptables-restore", "setpriv")
	tn := newTestNet(t, 7, "web", "backend")
	webHost, backendHost := tn.hosts[0], tn.hosts[1]
	const proxyUID = 1337

	s := startServerOn(t, fmt.Sprintf("%s:%d", tn.gw, trellistest.FreePort(t)))
	applyYAML(t, s, "kind: Service\nname: backend\nspec: {protocol: http}\n")
	s.mustCLI(t, "intention", "allow", "web", "backend")

	// The proxy runs as its own UID, which must read the binary and the CA.
	shared, err := os.MkdirTemp("", "trellis-tproxy")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	for _, dir := range []string{shared, filepath.Dir(bin)} {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	caFile := filepath.Join(shared, "ca.pem")
	if err := os.WriteFile(caFile, []byte(s.caPEM(t)), 0o644); err != nil {
		t.Fatal(err)
	}

	// The apps: backend on its loopback only; web on every address, so that
	// only the redirect keeps other hosts from it.
	serveName(t, backendHost.listen(t, "127.0.0.1:8080"), "backend", nil)
	var webHits atomic.Int64
	serveName(t, webHost.listen(t, "0.0.0.0:8080"), "web", &webHits)

	proxy := func(h *host, uid int, service string, extra ...string) *sidecar {
		token := strings.TrimSpace(s.mustCLI(t, "token", "create", "--service", service))
		args := append([]string{"proxy", "--service", service, "--app-port", "8080",
			"--public-addr", "0.0.0.0", "--public-port", "15443", "--advertise", h.ip,
			"--admin-port", "15000", "--server", s.addr, "--ca-file", caFile,
			"--log-level", "debug", "--health-interval", "250ms"}, extra...)
		p := &sidecar{proc: startWrapped(t, "proxy-"+service, h.wrap(uid), []string{"TRELLIS_TOKEN=" + token}, args...)}
		trellistest.Eventually(t, 30*time.Second, service+" proxy ready", func() error {
			_, err := fetch(h.client(), "http://127.0.0.1:15000/ready", "")
			return err
		})
		return p
	}
	proxy(backendHost, 0, "backend")

	// Before the rules, the web app is reachable around any proxy: what
	// the ingress redirect must stop.
	if got, err := fetch(http.DefaultClient, "http://"+webHost.ip+":8080/", ""); err != nil || got != "web" {
		t.Fatalf("web app before redirect = %q, %v", got, err)
	}
	webHits.Store(0)

	// A plain server outside the mesh, on this host: one port the rules
	// exclude, one they do not.
	var outsideHits atomic.Int64
	outside, err := net.Listen("tcp4", tn.gw+":0")
	if err != nil {
		t.Fatal(err)
	}
	serveName(t, outside, "outside", &outsideHits)
	excluded, err := net.Listen("tcp4", tn.gw+":0")
	if err != nil {
		t.Fatal(err)
	}
	serveName(t, excluded, "excluded", nil)
	excludedPort := strconv.Itoa(excluded.Addr().(*net.TCPAddr).Port)

	webHost.run(t, bin, "redirect", "--proxy-uid", strconv.Itoa(proxyUID), "--app-port", "8080",
		"--ingress-port", "15006", "--egress-port", "15001", "--exclude-port", excludedPort)
	rules := webHost.run(t, "iptables", "-t", "nat", "-S")
	for _, want := range []string{"--uid-owner 1337 -j RETURN", "-d 169.254.170.2/32 -j RETURN", "-d 169.254.169.254/32 -j RETURN", "--dports 8080 -j REDIRECT --to-ports 15006"} {
		if !strings.Contains(rules, want) {
			t.Errorf("iptables rules lack %q:\n%s", want, rules)
		}
	}
	webProxy := proxy(webHost, proxyUID, "web", "--upstream", "backend:15100", "--ingress-port", "15006", "--egress-port", "15001")
	s.waitInstances(t, 10*time.Second, "backend registered", "backend", 1)

	app := webHost.client()
	t.Run("by address", func(t *testing.T) {
		trellistest.Eventually(t, 10*time.Second, "web calls backend at its address", func() error {
			got, err := fetch(app, "http://"+backendHost.ip+":8080/", "")
			if err == nil && got != "backend" {
				err = fmt.Errorf("got %q", got)
			}
			return err
		})
	})
	t.Run("by name", func(t *testing.T) {
		// No instance has this address: the Host header names the service.
		got, err := fetch(app, "http://10.231.7.77:8080/", "backend.mesh.internal")
		if err != nil || got != "backend" {
			t.Errorf("call by name = %q, %v; want backend", got, err)
		}
	})
	t.Run("not a backend", func(t *testing.T) {
		_, err := fetch(app, "http://"+outside.Addr().String()+"/", "")
		if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "is not a backend of web (backends: backend)") {
			t.Errorf("call outside the mesh: err = %v, want 403 naming the backends", err)
		}
		// Not HTTP: refused without an answer.
		c, err := webHost.dial(context.Background(), "tcp4", outside.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("\x00\x01binary"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 64)); err == nil {
			t.Errorf("binary call outside the mesh read %d bytes, want the connection closed", n)
		}
		if n := outsideHits.Load(); n != 0 {
			t.Errorf("the outside server was reached %d times", n)
		}
	})
	t.Run("excluded port", func(t *testing.T) {
		got, err := fetch(app, "http://"+excluded.Addr().String()+"/", "")
		if err != nil || got != "excluded" {
			t.Errorf("call to an excluded port = %q, %v; want it direct", got, err)
		}
	})
	t.Run("not redirected", func(t *testing.T) {
		// Straight to the egress port: nowhere to forward it.
		_, err := fetch(app, "http://127.0.0.1:15001/", "backend")
		if err == nil {
			t.Error("a direct call to the egress port was forwarded")
		}
	})
	t.Run("ingress", func(t *testing.T) {
		// From another host, plain, to the app's port: redirected to the
		// proxy, which takes mesh mTLS only.
		if got, err := fetch(http.DefaultClient, "http://"+webHost.ip+":8080/", ""); err == nil {
			t.Errorf("plain call to the app's port from outside = %q, want it refused", got)
		}
		if n := webHits.Load(); n != 0 {
			t.Errorf("the web app was reached %d times around the mesh", n)
		}
	})

	metrics, err := fetch(app, "http://127.0.0.1:15000/metrics", "")
	if err != nil {
		t.Fatal(err)
	}
	for result, atLeast := range map[string]int{"address": 1, "host": 1, "refused": 3} {
		if n := metricValue(metrics, `trellis_proxy_transparent_egress_total{result="`+result+`"}`); n < atLeast {
			t.Errorf("egress %s = %d, want >= %d", result, n, atLeast)
		}
	}
	if !strings.Contains(webProxy.logText(), "outbound connection refused") {
		t.Error("the proxy did not log the refusals")
	}
}

// serveName serves HTTP on l, answering with name and counting requests.
func serveName(t *testing.T, l net.Listener, name string, hits *atomic.Int64) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits != nil && r.URL.Path != "/health" {
			hits.Add(1)
		}
		io.WriteString(w, name)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// metricValue reads one sample of a Prometheus text exposition, or -1.
func metricValue(text, series string) int {
	sc := bufio.NewScanner(strings.NewReader(text))
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			f, _ := strconv.ParseFloat(m[1], 64)
			return int(f)
		}
	}
	return -1
}
