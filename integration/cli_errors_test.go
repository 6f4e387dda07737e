//go:build linux

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// CLI errors say what, where and what to do (issue 23 item 3): help on
// every command exits 0, the version prints, unknown commands and kinds
// get the nearest known one, an unreachable server says where its
// address came from and how to start one, a wildcard intention can be
// deleted as it was written, and a proxy that never had a configuration
// does not claim to serve one.
func TestCLIErrorsSayWhatToDo(t *testing.T) {
	home := t.TempDir()
	noServer := []string{"HOME=" + home, "TRELLIS_ADDR=", "TRELLIS_TOKEN=", "TRELLIS_CACERT="}
	for _, args := range [][]string{
		{"-h"}, {"server", "-h"}, {"proxy", "-h"}, {"gateway", "-h"}, {"up", "-h"}, {"down", "-h"},
		{"apply", "-h"}, {"get", "-h"}, {"delete", "-h"}, {"intention", "-h"}, {"token", "-h"},
		{"token", "create", "-h"}, {"ca", "-h"}, {"ca", "rotate", "-h"}, {"inject", "-h"},
		{"inject", "ecs", "-h"}, {"redirect", "-h"}, {"top", "-h"}, {"stat", "-h"}, {"ready", "-h"},
		{"backup", "-h"}, {"restore", "-h"}, {"version", "-h"},
	} {
		if out, code := runCLI(t, noServer, args...); code != 0 || !strings.Contains(out, "Usage") {
			t.Errorf("trellis %s: exit %d, %q; want 0 and a usage", strings.Join(args, " "), code, head(out, 3))
		}
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, code := runCLI(t, noServer, args...)
		if code != 0 || !strings.HasPrefix(out, "trellis ") || !strings.Contains(out, "built with go1.") {
			t.Errorf("trellis %s: exit %d, %q; want the version and the Go that built it", args[0], code, out)
		}
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"servr"}, 2, `did you mean "server"?`},
		{[]string{"get", "servics"}, 2, `did you mean "services"?`},
		{[]string{"delete", "routs", "x"}, 2, `did you mean "route"?`},
		{[]string{"delete", "gatway", "x"}, 2, "want one of mesh, service, intention, route, gateway"},
	} {
		out, code := runCLI(t, noServer, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("trellis %s: exit %d, %q; want %d and %q", strings.Join(tc.args, " "), code, out, tc.code, tc.want)
		}
	}

	// No server at the address: say where it came from and what to do.
	down := "127.0.0.1:" + strconv.Itoa(trellistest.FreePort(t))
	out, code := runCLI(t, []string{"HOME=" + home, "TRELLIS_ADDR=" + down, "TRELLIS_TOKEN=x", "TRELLIS_CACERT="}, "get", "services")
	if code != 1 || !strings.Contains(out, "cannot reach the control plane at "+down+" (from TRELLIS_ADDR)") || !strings.Contains(out, "trellis up") {
		t.Errorf("server down: exit %d, %q", code, out)
	}
	// A context file left by a trellis up that is gone.
	os.MkdirAll(filepath.Join(home, ".trellis"), 0o700)
	os.WriteFile(filepath.Join(home, ".trellis", "context.json"), fmt.Appendf(nil, `{"addr":%q,"pid":2147483646}`, down), 0o600)
	out, code = runCLI(t, append(noServer, "TRELLIS_TOKEN=x"), "get", "services")
	if code != 1 || !strings.Contains(out, "no longer running") {
		t.Errorf("stale context file: exit %d, %q", code, out)
	}

	// A proxy whose server is down from the start serves no configuration,
	// and says so.
	s := startServer(t)
	px := start(t, "lonely", nil, "proxy", "--service", "web", "--app-port", strconv.Itoa(trellistest.FreePort(t)),
		"--server", down, "--ca-file", s.caFile, "--token-file", s.tokenFile(t, "web"),
		"--admin-port", strconv.Itoa(trellistest.FreePort(t)), "--state-dir", t.TempDir())
	trellistest.Eventually(t, 20*time.Second, "the proxy says it has no configuration", func() error {
		if log := px.logText(); !strings.Contains(log, "none yet") || strings.Contains(log, "last good configuration") {
			return fmt.Errorf("log:\n%s", tail(log, 5))
		}
		return nil
	})

	// A wildcard intention is deleted as it was written, or by its ends.
	s.mustCLI(t, "intention", "deny", "*", "web")
	if out, code := s.cli(t, "delete", "intention", "*.web"); code != 0 {
		t.Errorf("delete intention '*.web': exit %d, %q", code, out)
	}
	s.mustCLI(t, "intention", "allow", "client", "web")
	if out, code := s.cli(t, "delete", "intention", "client", "web"); code != 0 || !strings.Contains(out, "deleted") {
		t.Errorf("delete intention client web: exit %d, %q", code, out)
	}
	if out, code := s.cli(t, "delete", "intention", "clinet.web"); code == 0 || !strings.Contains(out, "no intention named") {
		t.Errorf("delete a missing intention: exit %d, %q", code, out)
	}
}
