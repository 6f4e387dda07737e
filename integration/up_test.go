//go:build linux

package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// runUpOnce runs `trellis up ARGS` that must fail fast, and returns its
// output and exit code.
func runUpOnce(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"up"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("trellis up %v still running after 20s (want a fast failure); output:\n%s", args, out.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	return out.String(), code
}

// served reports whether something accepts on 127.0.0.1:port.
func served(port int) bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 200*time.Millisecond)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// trellis up can't be wedged (issue 23 item 1): a second up fails at once
// naming the first; an up killed outright has its leftover apps swept by
// the next; each example keeps its own data dir between runs (--fresh
// starts over); `trellis down` stops it from another terminal; closing
// the terminal (SIGHUP) stops it; a start that fails on a busy port
// creates nothing.
func TestUpCannotBeWedged(t *testing.T) {
	// The tests may run with hangups ignored (under nohup), which the
	// up started below would inherit, and so ignore SIGHUP as a shell's
	// nohup asks it to. Catching SIGHUP here gives it the default back:
	// a caught signal is reset at exec, an ignored one is not.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ports := []int{7700, 8080, 9000, 9001, 9002, 9191, 9192}
	home := t.TempDir()
	u := startUpIn(t, home, "../examples/greeter", ports)
	dataDirs, _ := filepath.Glob(filepath.Join(home, ".trellis", "up", "greeter-*"))
	if len(dataDirs) != 1 || !strings.Contains(u.summary, "Data dir: "+dataDirs[0]+" (new;") {
		t.Errorf("want one new data dir for the example, shown at start; have %v, summary:\n%s", dataDirs, u.summary)
	}

	// A second up, even of another example, fails at once and names the
	// first.
	out, code := runUpOnce(t, u.env, "../examples/hello")
	if code == 0 || !strings.Contains(out, "already running (pid "+strconv.Itoa(u.cmd.Process.Pid)) || !strings.Contains(out, "trellis down") {
		t.Errorf("second up: exit %d, output %q; want a failure naming pid %d and `trellis down`", code, out, u.cmd.Process.Pid)
	}

	// Killed outright, up cannot stop its apps: they keep their ports.
	syscall.Kill(u.cmd.Process.Pid, syscall.SIGKILL)
	<-u.exited
	if !served(9000) {
		t.Fatal("no app left running after up was killed: the sweep below proves nothing")
	}
	// The next up sweeps them, and keeps the example's data dir.
	u = startUpIn(t, home, "../examples/greeter", nil)
	if !strings.Contains(u.summary, "left running by a trellis up that was killed") || !strings.Contains(u.summary, "Data dir: "+dataDirs[0]+" (kept") {
		t.Errorf("second run's summary does not say it swept leftovers and kept the data dir:\n%s", u.summary)
	}
	if got, err := get("127.0.0.1:8080"); err != nil || !strings.HasPrefix(got, "From greeter-1") {
		t.Errorf("greeter after the sweep: %q, %v", got, err)
	}

	// trellis down, from another terminal, stops it and its apps.
	if out, code := runCLI(t, u.env, "down"); code != 0 || !strings.Contains(out, "Stopped trellis up (pid "+strconv.Itoa(u.cmd.Process.Pid)) {
		t.Errorf("trellis down: exit %d, %q", code, out)
	}
	select {
	case <-u.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("up still running after trellis down returned")
	}
	for _, p := range ports {
		if served(p) {
			t.Errorf("port %d still served after trellis down", p)
		}
	}
	if out, _ := runCLI(t, u.env, "down"); !strings.Contains(out, "not running") {
		t.Errorf("trellis down with none running: %q", out)
	}

	// --fresh starts over; closing the terminal (SIGHUP) stops everything.
	u = startUpIn(t, home, "../examples/greeter", nil, "--fresh")
	if !strings.Contains(u.summary, "Data dir: "+dataDirs[0]+" (new;") {
		t.Errorf("--fresh did not start over:\n%s", u.summary)
	}
	syscall.Kill(u.cmd.Process.Pid, syscall.SIGHUP)
	select {
	case <-u.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("up still running 20s after SIGHUP")
	}
	trellistest.Eventually(t, 5*time.Second, "ports free after SIGHUP", func() error {
		for _, p := range ports {
			if served(p) {
				return fmt.Errorf("port %d still served", p)
			}
		}
		return nil
	})

	// A busy port fails the start before anything is created.
	l, err := net.Listen("tcp", "127.0.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	home2 := t.TempDir()
	env2 := append([]string{}, u.env...)
	for i, kv := range env2 {
		if strings.HasPrefix(kv, "HOME=") {
			env2[i] = "HOME=" + home2
		}
	}
	out, code = runUpOnce(t, env2, "../examples/greeter")
	if code == 0 || !strings.Contains(out, "port 8080") {
		t.Errorf("up with port 8080 taken: exit %d, %q; want a failure naming the port", code, out)
	}
	if made, _ := filepath.Glob(filepath.Join(home2, ".trellis", "up", "*")); len(made) != 0 {
		t.Errorf("a failed start created %v", made)
	}
}

// checkCurlHints runs every curl line of up's startup summary as printed
// and wants 200 from each (issue 23: the hints answered 404).
func checkCurlHints(t *testing.T, summary string) {
	t.Helper()
	hints := regexp.MustCompile(`curl (.+?)   \(`).FindAllStringSubmatch(summary, -1)
	if len(hints) == 0 {
		t.Errorf("the summary has no curl line:\n%s", summary)
	}
	for _, h := range hints {
		args := append([]string{"-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"}, strings.Fields(h[1])...)
		out, err := exec.Command("curl", args...).Output()
		if err != nil || string(out) != "200" {
			t.Errorf("the summary's `curl %s` answered %q, %v; want 200", h[1], out, err)
		}
	}
}
