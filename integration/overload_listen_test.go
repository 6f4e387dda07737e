//go:build linux

package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// Issue 19 items 1 and 5, against the real binary: listeners under a
// lowered descriptor limit, and connection limits. Each proxy has an
// edge listener in passthrough mode, which splices each connection to
// the app: a held connection costs the proxy two descriptors and stays
// open until the test closes it.

// listenProxy is a proxy for the app on appPort with an edge listener,
// run through wrap (prlimit), with extra flags.
type listenProxy struct {
	*sidecar
	edge string
}

func listenStartProxy(t *testing.T, s *server, appPort int, wrap []string, extra ...string) *listenProxy {
	t.Helper()
	admin := trellistest.FreePort(t)
	edge, edgePort := loopAddr(t)
	args := []string{"proxy", "--service", "web", "--app-port", strconv.Itoa(appPort),
		"--server", s.addr, "--ca-file", s.caFile, "--token-file", s.tokenFile(t, "web"),
		"--state-dir", t.TempDir(), "--admin-port", strconv.Itoa(admin), "--log-level", "debug",
		"--log-format", "json", "--health-interval", "250ms",
		"--edge-port", strconv.Itoa(edgePort), "--edge-addr", "127.0.0.1", "--edge-mode", "passthrough"}
	args = append(args, extra...)
	p := &sidecar{proc: startWrapped(t, "proxy-web", wrap, nil, args...), admin: fmt.Sprintf("127.0.0.1:%d", admin)}
	p.waitReady(t)
	return &listenProxy{sidecar: p, edge: edge}
}

// listenDial opens n connections to addr and closes them when the test
// ends. The dials succeed whether or not the proxy accepts them: the
// kernel completes them into the listen backlog.
func listenDial(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %s after %d connections: %v", addr, len(conns), err)
		}
		conns = append(conns, c)
	}
	t.Cleanup(func() { listenCloseAll(conns) })
	return conns
}

func listenCloseAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// listenServed sends a request on c, which the proxy splices to the app,
// and reports whether the app answered; a connection the proxy refused
// is closed at once. The deadline is a safety net, not a wait: an
// accepted connection answers in milliseconds.
func listenServed(c net.Conn) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(b) != "web" {
		return fmt.Errorf("status %d %q", resp.StatusCode, b)
	}
	return nil
}

// listenCountServed sends a request on every connection at once and
// returns how many the app answered: at once, so that a run where many
// hang costs one deadline, not one each.
func listenCountServed(conns []net.Conn) int {
	results := make(chan error, len(conns))
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() { defer wg.Done(); results <- listenServed(c) }()
	}
	wg.Wait()
	close(results)
	served := 0
	for err := range results {
		if err == nil {
			served++
		}
	}
	return served
}

// listenMetric sums the samples of a metric on a proxy's /metrics whose
// labels contain every one of match.
func listenMetric(t *testing.T, admin, name string, match ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(line, m)
		}
		if i := strings.LastIndexByte(line, ' '); ok && i > 0 {
			v, _ := strconv.ParseFloat(line[i+1:], 64)
			sum += v
		}
	}
	return sum
}

// listenGet fetches the app through a new connection to the edge.
func listenGet(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return listenServed(c)
}

func TestListenOverload(t *testing.T) {
	s := startServer(t)
	app := startApp(t, "web")

	// With the limits off and 200 descriptors, 250 held connections
	// exhaust them: accepts fail with EMFILE. The listener keeps serving
	// what it has, keeps retrying, and accepts again once descriptors
	// are freed; the episode is logged and counted.
	t.Run("descriptors exhausted", func(t *testing.T) {
		p := listenStartProxy(t, s, app.port, []string{"prlimit", "--nofile=200:200", "--"},
			"--max-connections", "-1", "--fd-high-water", "-1")
		conns := listenDial(t, p.edge, 250)
		trellistest.Eventually(t, 10*time.Second, "accepts failing with EMFILE", func() error {
			log := p.logText()
			if !strings.Contains(log, "accept failing; retrying with backoff") || !strings.Contains(log, `"reason":"emfile"`) {
				return fmt.Errorf("no EMFILE episode logged yet")
			}
			return nil
		})
		if err := listenServed(conns[0]); err != nil {
			t.Errorf("a connection accepted before the exhaustion: %v, want it still served", err)
		}
		listenCloseAll(conns)
		trellistest.Eventually(t, 15*time.Second, "a new connection served after descriptors were freed", func() error {
			return listenGet(p.edge)
		})
		if !strings.Contains(p.logText(), `"msg":"accepting again"`) {
			t.Errorf("no line saying the listener accepts again")
		}
		if n := listenMetric(t, p.admin, "trellis_listener_accept_errors_total", `listener="edge"`, `reason="emfile"`); n < 1 {
			t.Errorf("trellis_listener_accept_errors_total{listener=edge,reason=emfile} = %v, want > 0", n)
		}
		p.waitReady(t)
	})

	// With the default limits, the same 200 descriptors give a process
	// limit of 62 connections: the rest are refused at once and counted,
	// accept never fails, and those admitted keep being served.
	t.Run("default limits under 200 descriptors", func(t *testing.T) {
		p := listenStartProxy(t, s, app.port, []string{"prlimit", "--nofile=200:200", "--"})
		conns := listenDial(t, p.edge, 250)
		served := listenCountServed(conns)
		refused := listenMetric(t, p.admin, "trellis_connections_refused_total", `listener="edge"`)
		t.Logf("%d served, %v refused", served, refused)
		if served == 0 || served > 62 {
			t.Errorf("%d connections served, want 1 to 62 (the process limit at 200 descriptors)", served)
		}
		if int(refused)+served != len(conns) {
			t.Errorf("%d served + %v refused, want %d in all: every connection either served or refused and counted", served, refused, len(conns))
		}
		if n := listenMetric(t, p.admin, "trellis_listener_accept_errors_total"); n != 0 {
			t.Errorf("%v accept errors under the default limits, want none: the limits keep the process off EMFILE", n)
		}
		if n := listenMetric(t, p.admin, "trellis_connections_limit", `kind="max_connections"`); n != 62 {
			t.Errorf("trellis_connections_limit{kind=max_connections} = %v, want 62", n)
		}
		// Those admitted are still served after the refusals.
		if again := listenCountServed(conns); again != served {
			t.Errorf("%d connections served on a second request, want the %d admitted", again, served)
		}
	})

	// A per-listener limit of 300 with 400 connections: 100 refused with
	// reason listener_limit, 300 served; freeing slots admits new ones.
	// Then the listener is broken under the proxy (shut down, as a
	// failing socket is): /ready says so and the process exits with an
	// error instead of keeping a dead port.
	t.Run("listener limit, then a listener failure", func(t *testing.T) {
		p := listenStartProxy(t, s, app.port, []string{"prlimit", "--nofile=4096:4096", "--"},
			"--max-connections-per-listener", "300", "--drain-timeout", "2s")
		conns := listenDial(t, p.edge, 400)
		served := listenCountServed(conns)
		if served != 300 {
			t.Errorf("%d of 400 connections served, want 300", served)
		}
		if n := listenMetric(t, p.admin, "trellis_connections_refused_total", `listener="edge"`, `reason="listener_limit"`); n != 100 {
			t.Errorf("trellis_connections_refused_total{listener=edge,reason=listener_limit} = %v, want 100", n)
		}
		listenCloseAll(conns[:50])
		trellistest.Eventually(t, 10*time.Second, "a new connection served once slots were freed", func() error {
			return listenGet(p.edge)
		})

		_, port, _ := net.SplitHostPort(p.edge)
		edgePort, _ := strconv.Atoi(port)
		trellistest.BreakListener(t, p.pid(), edgePort)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			t.Fatal("the proxy still runs 30 s after its edge listener failed")
		}
		if code := p.cmd.ProcessState.ExitCode(); code == 0 {
			t.Errorf("proxy exit code 0 after a listener failed, want an error")
		}
		log := p.logText()
		if !strings.Contains(log, "edge listener failed") {
			t.Errorf("log does not say the edge listener failed:\n%s", tail(log, 20))
		}
	})
}
