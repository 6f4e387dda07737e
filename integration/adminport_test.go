//go:build linux

package integration

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// --admin-port defaults to 15000, the port `trellis ready` checks, for
// trellis proxy and trellis gateway, where one proxy per network
// namespace is the rule (issue 23 item 4): the documented container
// health check works without telling either side. A second proxy in the
// namespace fails at once naming the flag; --admin-port 0 takes any free
// port. The port is fixed: run this in a network namespace of its own.
func TestAdminPortDefault(t *testing.T) {
	if served(15000) {
		t.Skip("port 15000 is in use; run this test in a network namespace of its own")
	}
	s := startServer(t)
	web := startApp(t, "web")
	proxyArgs := func(service string, extra ...string) []string {
		return append([]string{"proxy", "--service", service, "--app-port", strconv.Itoa(web.port),
			"--server", s.addr, "--ca-file", s.caFile, "--token-file", s.tokenFile(t, service),
			"--state-dir", t.TempDir()}, extra...)
	}
	start(t, "proxy-default", nil, proxyArgs("web")...)
	trellistest.Eventually(t, 30*time.Second, "trellis ready, with no flags, sees the proxy", func() error {
		if out, code := runCLI(t, nil, "ready"); code != 0 {
			return fmt.Errorf("exit %d: %s", code, out)
		}
		return nil
	})

	// A second proxy in the same namespace, and a gateway, with the
	// default: a clear error naming the flag, at once.
	for _, args := range [][]string{
		proxyArgs("web"),
		{"gateway", "--name", "front", "--listen-addr", "127.0.0.1", "--server", s.addr, "--ca-file", s.caFile,
			"--token-file", s.tokenFile(t, "front"), "--state-dir", t.TempDir()},
	} {
		out, code := runCLI(t, nil, args...)
		if code != 1 || !strings.Contains(out, "127.0.0.1:15000") || !strings.Contains(out, "--admin-port") {
			t.Errorf("trellis %s with 15000 taken: exit %d, %q; want 1 naming the port and --admin-port", args[0], code, out)
		}
	}

	// 0 is any free port.
	p := start(t, "proxy-any", nil, proxyArgs("web", "--admin-port", "0")...)
	trellistest.Eventually(t, 30*time.Second, "the second proxy registers", func() error {
		if out, _ := s.cli(t, "get", "instances"); strings.Count(out, "web") < 2 {
			return fmt.Errorf("%s", out)
		}
		return nil
	})
	select {
	case <-p.done:
		t.Fatalf("the proxy with --admin-port 0 exited:\n%s", tail(p.logText(), 10))
	default:
	}
}
