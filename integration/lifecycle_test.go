//go:build linux

package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// rawConn is one client TCP connection through a listener, for requests on
// a connection that must stay the same.
type rawConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) get() (string, error) {
	r.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(r.c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestSIGTERMDrains(t *testing.T) {
	s := startServer(t)
	s.mustCLI(t, "intention", "allow", "client", "web")
	web := startApp(t, "web")
	wp := s.startProxy(t, proxyOpts{service: "web", appPort: web.port, extra: []string{"--drain-timeout", "20s"}})
	up, upPort := loopAddr(t)
	s.startProxy(t, proxyOpts{service: "client", appPort: web.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	trellistest.Eventually(t, 10*time.Second, "mesh call", func() error { _, err := get(up); return err })

	open := dialRaw(t, up)
	if got, err := open.get(); err != nil || got != "web" {
		t.Fatalf("first request on the open connection: %q, %v", got, err)
	}
	termAt := time.Now()
	wp.cmd.Process.Signal(syscall.SIGTERM)

	// It leaves the mesh at once...
	s.waitInstances(t, 3*time.Second, "deregistered after SIGTERM", "web", 0)
	// ...while the open connection keeps working during the drain...
	time.Sleep(2 * time.Second)
	if got, err := open.get(); err != nil || got != "web" {
		t.Fatalf("request on the open connection during drain: %q, %v", got, err)
	}
	select {
	case <-wp.done:
		t.Fatal("proxy exited with a connection still open, before the drain timeout")
	default:
	}
	// ...and once it closes, the proxy exits without waiting out the timeout.
	open.c.Close()
	select {
	case <-wp.done:
		t.Logf("proxy exited %v after SIGTERM", time.Since(termAt).Round(time.Millisecond))
	case <-time.After(8 * time.Second):
		t.Fatal("proxy still running 8s after its last connection closed")
	}
}

func TestUnhealthyInstanceLeavesEndpoints(t *testing.T) {
	p := startPair(t)
	web2 := startApp(t, "web2")
	p.srv.startProxy(t, proxyOpts{service: "web", appPort: web2.port, extra: []string{"--health-path", "/health"}})
	seen := func(n int) map[string]int {
		out := map[string]int{}
		for range n {
			got, err := get(p.upstream)
			if err != nil {
				got = "error: " + err.Error()
			}
			out[got]++
		}
		return out
	}
	trellistest.Eventually(t, 10*time.Second, "both instances serve", func() error {
		if s := seen(20); s["web2"] == 0 || s["web"] == 0 {
			return fmt.Errorf("saw %v", s)
		}
		return nil
	})
	web2.sick.Store(true)
	trellistest.Eventually(t, 5*time.Second, "unhealthy instance gets no traffic", func() error {
		if s := seen(30); s["web"] != 30 {
			return fmt.Errorf("saw %v", s)
		}
		return nil
	})
	ins, _ := p.srv.api.Instances(context.Background(), "web")
	unhealthy := 0
	for _, in := range ins {
		if !in.Healthy {
			unhealthy++
		}
	}
	if len(ins) != 2 || unhealthy != 1 {
		t.Errorf("instances = %+v, want 2 with 1 unhealthy", ins)
	}
	web2.sick.Store(false)
	trellistest.Eventually(t, 5*time.Second, "recovered instance serves again", func() error {
		if s := seen(20); s["web2"] == 0 {
			return fmt.Errorf("saw %v", s)
		}
		return nil
	})
}

func TestPermissiveMode(t *testing.T) {
	p := startPair(t)
	plain := func() error {
		c, err := net.DialTimeout("tcp", p.webEndpoint(t), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		r := &rawConn{c: c, br: bufio.NewReader(c)}
		got, err := r.get()
		if err == nil && got != "web" {
			err = fmt.Errorf("got %q", got)
		}
		return err
	}
	// Strict (the default): plain TCP to the public port is refused.
	if err := plain(); err == nil {
		t.Fatal("plain TCP accepted in strict mode")
	}
	applyYAML(t, p.srv, "kind: Mesh\nname: default\nspec:\n  mtls: permissive\n")
	// A plain caller has no identity: under the default deny, only a
	// wildcard intention lets it in.
	trellistest.Eventually(t, 5*time.Second, "plain TCP refused without a wildcard intention", func() error {
		if plain() == nil {
			return fmt.Errorf("accepted")
		}
		return nil
	})
	p.srv.mustCLI(t, "intention", "allow", "*", "web")
	trellistest.Eventually(t, 5*time.Second, "plain TCP accepted in permissive mode", plain)
	// mTLS callers still work beside it.
	if got, err := get(p.upstream); err != nil || got != "web" {
		t.Errorf("mTLS call in permissive mode: %q, %v", got, err)
	}
	// A plain caller has no identity: a wildcard deny shuts it out.
	p.srv.mustCLI(t, "intention", "deny", "*", "web")
	p.srv.mustCLI(t, "intention", "allow", "client", "web")
	trellistest.Eventually(t, 5*time.Second, "plain TCP denied by wildcard intention", func() error {
		if plain() == nil {
			return fmt.Errorf("still accepted")
		}
		return nil
	})
	if got, err := get(p.upstream); err != nil || got != "web" {
		t.Errorf("allowed mTLS client: %q, %v", got, err)
	}
}
