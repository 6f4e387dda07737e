//go:build linux

package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testNet is a bridge in this namespace with hosts, each a network
// namespace with its own address on the bridge: several machines on one,
// for what must cross a real network (iptables, addresses that are not
// loopback). The bridge's own address is the host's, where a test runs
// its control plane.
type testNet struct {
	bridge string
	gw     string // this namespace's address on the bridge
	hosts  []*host
}

// host is one network namespace of a testNet.
type host struct {
	ns string
	ip string
}

// needNetns skips the test unless it can make namespaces; where CI sets
// TRELLIS_REQUIRE_NETNS it fails instead, so that CI never passes by
// skipping.
func needNetns(t *testing.T, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("TRELLIS_REQUIRE_NETNS") != "" {
		t.Fatalf("network namespace tests need %s", strings.Join(missing, ", "))
	}
	t.Skipf("network namespace tests need %s", strings.Join(missing, ", "))
}

// newTestNet makes a bridge on 10.231.<n>.0/24 and one host per name,
// removed when the test ends.
func newTestNet(t *testing.T, n int, names ...string) *testNet {
	t.Helper()
	return newNamedNet(t, netNaming{bridge: fmt.Sprintf("trbr%d", n), ns: "trellis-", veth: fmt.Sprintf("tr%d-", n),
		subnet: fmt.Sprintf("10.231.%d", n)}, names...)
}

// netNaming is what a testNet's links and namespaces are called: every
// name a test makes starts with its own prefix, so that tests of other
// packages or worktrees running at the same time never collide.
type netNaming struct {
	bridge string // the bridge's name
	ns     string // prefix of each host's namespace, before its name
	veth   string // prefix of each host's veth (cut to 15 characters)
	subnet string // the /24's first three octets: the bridge is .1, hosts .2 on
}

// newNamedNet makes the bridge and one host per name, as n names them,
// removed when the test ends.
func newNamedNet(t *testing.T, n netNaming, names ...string) *testNet {
	t.Helper()
	tn := &testNet{bridge: n.bridge, gw: n.subnet + ".1"}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	// Leftovers of a run that was killed would collide.
	exec.Command("ip", "link", "del", tn.bridge).Run()
	for _, name := range names {
		exec.Command("ip", "netns", "del", n.ns+name).Run()
	}
	ip("link", "add", tn.bridge, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", tn.bridge).Run() })
	ip("addr", "add", tn.gw+"/24", "dev", tn.bridge)
	ip("link", "set", tn.bridge, "up")
	for i, name := range names {
		h := &host{ns: n.ns + name, ip: fmt.Sprintf("%s.%d", n.subnet, i+2)}
		veth := n.veth + name
		if len(veth) > 15 {
			veth = veth[:15]
		}
		ip("netns", "add", h.ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", h.ns).Run() })
		ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
		ip("link", "set", veth, "master", tn.bridge, "up")
		ip("-n", h.ns, "addr", "add", h.ip+"/24", "dev", "eth0")
		ip("-n", h.ns, "link", "set", "eth0", "up")
		ip("-n", h.ns, "link", "set", "lo", "up")
		tn.hosts = append(tn.hosts, h)
	}
	return tn
}

// run runs a command in h, failing the test if it fails.
func (h *host) run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", h.ns, name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s %s: %v: %s", h.ns, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// wrap is the command prefix that runs a program in h as uid (0: root).
func (h *host) wrap(uid int) []string {
	w := []string{"ip", "netns", "exec", h.ns}
	if uid != 0 {
		w = append(w, "setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", uid), "--clear-groups", "--")
	}
	return w
}

// do runs f on a thread inside h. Sockets belong to the namespace they were
// made in, so a listener or connection made by f stays in h afterwards.
func (h *host) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + h.ns)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", h.ns, err)
			return
		}
		err = f()
		// A thread that cannot go back dies with its goroutine, locked.
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// listen listens on addr inside h.
func (h *host) listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	if err := h.do(func() (err error) { l, err = net.Listen("tcp4", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// dial connects from inside h, as root: an app's connection, which the
// host's redirect rules see.
func (h *host) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.do(func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// client is an HTTP client whose connections start inside h.
func (h *host) client() *http.Client {
	return &http.Client{
		Transport: &http.Transport{DialContext: h.dial, DisableKeepAlives: true},
		Timeout:   10 * time.Second,
	}
}
