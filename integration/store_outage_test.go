//go:build linux

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// etcdMember is one member of a test's etcd cluster (Debian's etcd).
type etcdMember struct {
	name, client string
	args         []string
	cmd          *exec.Cmd
	done         chan struct{}
}

func (m *etcdMember) start(t *testing.T) {
	t.Helper()
	m.cmd = exec.Command("etcd", m.args...)
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(m.cmd, m.done)
}

func (m *etcdMember) kill() { m.stop(syscall.SIGKILL) }

// stop sends sig and waits for the member to exit (killed after 20s).
func (m *etcdMember) stop(sig syscall.Signal) {
	select {
	case <-m.done:
		return
	default:
	}
	m.cmd.Process.Signal(sig)
	select {
	case <-m.done:
	case <-time.After(20 * time.Second):
		m.cmd.Process.Kill()
		<-m.done
	}
}

// startEtcdCluster runs n members on ip, as startEtcd runs one, and waits
// until the cluster has a leader.
func startEtcdCluster(t *testing.T, ip string, n int) []*etcdMember {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("etcd binary not found; install Debian's etcd-server (.ci/run does)")
	}
	var ms []*etcdMember
	var initial []string
	peers := make([]string, n)
	for i := range n {
		peers[i] = fmt.Sprintf("http://%s:%d", ip, trellistest.FreePort(t))
		initial = append(initial, fmt.Sprintf("st%d=%s", i, peers[i]))
	}
	for i := range n {
		name := fmt.Sprintf("st%d", i)
		c := fmt.Sprintf("http://%s:%d", ip, trellistest.FreePort(t))
		m := &etcdMember{name: name, client: c, args: []string{"--name", name, "--data-dir", filepath.Join(t.TempDir(), name),
			"--listen-client-urls", c, "--advertise-client-urls", c,
			"--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "st-" + t.Name(), "--log-level", "error"}}
		m.start(t)
		t.Cleanup(m.kill)
		ms = append(ms, m)
	}
	trellistest.Eventually(t, 30*time.Second, "etcd cluster healthy", func() error {
		_, err := etcdctl(ms, "endpoint", "health", "--cluster")
		return err
	})
	return ms
}

func endpointsOf(ms []*etcdMember) string {
	var eps []string
	for _, m := range ms {
		eps = append(eps, m.client)
	}
	return strings.Join(eps, ",")
}

func etcdctl(ms []*etcdMember, args ...string) (string, error) {
	cmd := exec.Command("etcdctl", append([]string{"--endpoints", endpointsOf(ms), "--command-timeout", "3s"}, args...)...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("etcdctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// leaderIndex returns which member leads.
func leaderIndex(t *testing.T, ms []*etcdMember) int {
	t.Helper()
	i, err := leaderAmong(ms, ms)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// leaderAmong asks the members of live which member of ms leads, and
// returns its index in ms; an error when they know of none.
func leaderAmong(ms, live []*etcdMember) (int, error) {
	out, err := etcdctl(live, "endpoint", "status", "-w", "json")
	if err != nil {
		return -1, err
	}
	var st []struct {
		Endpoint string `json:"Endpoint"`
		Status   struct {
			Header struct {
				MemberID uint64 `json:"member_id"`
			} `json:"header"`
			Leader uint64 `json:"leader"`
		} `json:"Status"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return -1, fmt.Errorf("etcdctl endpoint status: %v: %s", err, out)
	}
	for _, s := range st {
		if s.Status.Header.MemberID == s.Status.Leader {
			for i, m := range ms {
				if m.client == s.Endpoint {
					return i, nil
				}
			}
		}
	}
	return -1, fmt.Errorf("no leader in %s", out)
}

// stNet is a network namespace (st-srv) joined to this one by a veth pair:
// the server runs inside, etcd outside, so that the server's path to etcd
// can be cut with iptables while the test still reaches its API.
type stNet struct{ ns, hostIP, nsIP string }

func newStNet(t *testing.T) *stNet {
	t.Helper()
	n := &stNet{ns: "st-srv", hostIP: "10.247.13.1", nsIP: "10.247.13.2"}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	exec.Command("ip", "netns", "del", n.ns).Run() // a killed run's leftovers
	exec.Command("ip", "link", "del", "st-h").Run()
	ip("netns", "add", n.ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.ns).Run() })
	ip("link", "add", "st-h", "type", "veth", "peer", "name", "st-n", "netns", n.ns)
	t.Cleanup(func() { exec.Command("ip", "link", "del", "st-h").Run() })
	ip("addr", "add", n.hostIP+"/24", "dev", "st-h")
	ip("link", "set", "st-h", "up")
	ip("-n", n.ns, "addr", "add", n.nsIP+"/24", "dev", "st-n")
	ip("-n", n.ns, "link", "set", "st-n", "up")
	ip("-n", n.ns, "link", "set", "lo", "up")
	return n
}

// iptables runs iptables in the namespace.
func (n *stNet) iptables(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"netns", "exec", n.ns, "iptables"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("iptables %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// rawWrite is one API write, without the client's retries, so that each
// answer's time is the server's.
type rawWrite struct {
	name, key   string
	code        int
	outcome     string
	msg         string
	took        time.Duration
	transportEr error
}

// writeService applies a Service; with keyed, under an idempotency key of
// the test's (the server first reads its record), else under the
// server's.
func writeService(t *testing.T, s *server, name string, keyed bool) rawWrite {
	t.Helper()
	w := rawWrite{name: name}
	if keyed {
		w.key = fmt.Sprintf("st-%s-%d", name, time.Now().UnixNano())
	}
	body, _ := json.Marshal([]v1.Resource{{Kind: v1.KindService, Name: name, Service: &v1.ServiceSpec{Protocol: "http"}}})
	req, _ := http.NewRequest("POST", "https://"+s.addr+"/v1/resources", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+s.admin)
	if keyed {
		req.Header.Set("Idempotency-Key", w.key)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: s.api.TLSConfig()}, Timeout: 30 * time.Second}
	defer hc.CloseIdleConnections()
	start := time.Now()
	resp, err := hc.Do(req)
	w.took = time.Since(start)
	if err != nil {
		w.transportEr = err
		return w
	}
	defer resp.Body.Close()
	var e struct {
		Error    string `json:"error"`
		WriteKey string `json:"writeKey"`
	}
	json.NewDecoder(resp.Body).Decode(&e)
	w.code, w.outcome, w.msg = resp.StatusCode, resp.Header.Get("Trellis-Write-Outcome"), e.Error
	if w.key == "" {
		w.key = e.WriteKey
	}
	return w
}

// checkFailed asserts that an outage's write failed within the deadline
// with a clear error and a definite or unknown outcome.
func checkFailed(t *testing.T, w rawWrite, deadline time.Duration) {
	t.Helper()
	if w.transportEr != nil {
		t.Errorf("write %s: %v", w.name, w.transportEr)
		return
	}
	if w.code != http.StatusServiceUnavailable || (w.outcome != "not-applied" && w.outcome != "unknown") || !strings.Contains(w.msg, "store") {
		t.Errorf("write %s: got %d %q %q, want 503 not-applied or unknown, saying why", w.name, w.code, w.outcome, w.msg)
	}
	if w.took > deadline+time.Second {
		t.Errorf("write %s answered after %v, want within its deadline of %v", w.name, w.took, deadline)
	}
}

// settle checks, once the store is back, that every failed write is as
// its answer said: a not-applied one is not in the store, and an unknown
// one got settled either way, with the store agreeing with its record.
func settle(t *testing.T, s *server, ms []*etcdMember, writes []rawWrite) (applied int) {
	t.Helper()
	for _, w := range writes {
		out, err := etcdctl(ms, "get", "--keys-only", "/trellis/resources/Service/"+w.name)
		if err != nil {
			t.Fatal(err)
		}
		inStore := strings.TrimSpace(out) != ""
		switch w.outcome {
		case "not-applied":
			if inStore {
				t.Errorf("write %s was answered not applied and is in the store", w.name)
			}
		case "unknown":
			var rec struct {
				Outcome string `json:"outcome"`
			}
			trellistest.Eventually(t, 60*time.Second, "write "+w.name+" settled", func() error {
				return getJSON(s, "/v1/writes/"+w.key, &rec)
			})
			// Read the store again: the write may have landed after the
			// first look, just before its record settled it.
			out, _ := etcdctl(ms, "get", "--keys-only", "/trellis/resources/Service/"+w.name)
			inStore = strings.TrimSpace(out) != ""
			if inStore != (rec.Outcome == "applied") {
				t.Errorf("write %s of unknown outcome settled as %s, but in store = %v", w.name, rec.Outcome, inStore)
			}
		}
		if inStore {
			applied++
		}
	}
	return applied
}

func getJSON(s *server, path string, v any) error {
	req, _ := http.NewRequest("GET", "https://"+s.addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+s.admin)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: s.api.TLSConfig()}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// staleHeader returns the server's stale warning on a read, or "".
func staleHeader(t *testing.T, s *server) string {
	t.Helper()
	var got string
	c, err := client.New(client.Config{Addr: s.addr, Token: s.admin, CAPEM: mustRead(t, s.caFile), OnStale: func(w string) { got = w }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	if _, err := c.Services(t.Context()); err != nil {
		t.Fatalf("a read during the outage: %v", err)
	}
	return got
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// API writes during a loss of quorum and while the server is cut off
// from etcd fail within their deadline, saying whether they may still
// apply; once etcd is back, none answered "not applied" is applied, and
// every "unknown" one is settled with the store agreeing; reads during
// the outage say they may be stale, and the CLI shows it.
func TestWritesDuringStoreOutages(t *testing.T) {
	needNetns(t, "iptables", "etcdctl")
	n := newStNet(t)
	ms := startEtcdCluster(t, n.hostIP, 3)
	const deadline = 3 * time.Second
	addr := net.JoinHostPort(n.nsIP, fmt.Sprint(trellistest.FreePort(t)))
	s := startServerIn(t, "server", []string{"ip", "netns", "exec", n.ns}, addr,
		"--etcd-endpoints", endpointsOf(ms), "--write-timeout", deadline.String())
	dir := s.dataDir
	if w := writeService(t, s, "before", true); w.code != http.StatusOK {
		t.Fatalf("a write with the store up: %+v", w)
	}

	t.Run("quorum lost", func(t *testing.T) {
		// Keep the leader, which goes on taking proposals until it sees it
		// lost quorum: the case that applied writes answered as failed.
		lead := leaderIndex(t, ms)
		var killed []*etcdMember
		for i, m := range ms {
			if i != lead {
				m.kill()
				killed = append(killed, m)
			}
		}
		var writes []rawWrite
		for i := range 4 { // at once, before the leader steps down
			writes = append(writes, writeService(t, s, fmt.Sprintf("quorum-early-%d", i), i%2 == 1))
		}
		trellistest.Eventually(t, 20*time.Second, "reads say stale", func() error {
			if staleHeader(t, s) == "" {
				return fmt.Errorf("no %s header", "Trellis-Stale")
			}
			return nil
		})
		if code := healthz(t, s); code != http.StatusServiceUnavailable {
			t.Errorf("GET /healthz with no quorum: %d, want 503", code)
		}
		for i := range 4 {
			writes = append(writes, writeService(t, s, fmt.Sprintf("quorum-late-%d", i), i%2 == 0))
		}
		for _, w := range writes {
			checkFailed(t, w, deadline)
		}
		for _, w := range writes[4:] {
			if w.outcome != "not-applied" {
				t.Errorf("write %s with no leader: outcome %q, want not-applied (etcd refuses it before its log)", w.name, w.outcome)
			}
		}
		out, code := s.cli(t, "get", "services")
		if code != 0 || !strings.Contains(out, "stale") {
			t.Errorf("trellis get services during the outage: exit %d, no stale warning: %s", code, out)
		}
		writeFile(filepath.Join(dir, "svc.yaml"), "kind: Service\nname: cli-write\nspec:\n  protocol: http\n")
		cliOut, code := s.cli(t, "apply", "-f", filepath.Join(dir, "svc.yaml"))
		if code == 0 || !strings.Contains(cliOut, "store") {
			t.Errorf("trellis apply during the outage: exit %d: %s", code, cliOut)
		}
		t.Logf("trellis apply during the outage: %s", strings.TrimSpace(cliOut))
		for _, m := range killed {
			m.start(t)
		}
		trellistest.Eventually(t, 60*time.Second, "writes work again", func() error {
			if w := writeService(t, s, "quorum-back", true); w.code != http.StatusOK {
				return fmt.Errorf("%d %s %s", w.code, w.outcome, w.msg)
			}
			return nil
		})
		if strings.Contains(cliOut, "nothing applied") {
			writes = append(writes, rawWrite{name: "cli-write", outcome: "not-applied"})
		}
		applied := settle(t, s, ms, writes)
		report(t, "quorum lost", writes, applied)
		trellistest.Eventually(t, 20*time.Second, "healthz ok again", func() error {
			if code := healthz(t, s); code != http.StatusOK {
				return fmt.Errorf("GET /healthz: %d", code)
			}
			return nil
		})
	})

	t.Run("server cut off", func(t *testing.T) {
		// Packets to etcd dropped, not refused: requests wait in the TCP
		// send queue and may arrive when the path comes back.
		_, apiPort, _ := net.SplitHostPort(addr)
		rule := []string{"OUTPUT", "-d", n.hostIP, "-p", "tcp", "!", "--sport", apiPort, "-j", "DROP"}
		n.iptables(t, append([]string{"-I"}, rule...)...)
		cut := true
		heal := func() {
			if cut {
				n.iptables(t, append([]string{"-D"}, rule...)...)
				cut = false
			}
		}
		t.Cleanup(heal)
		var writes []rawWrite
		for i := range 4 {
			writes = append(writes, writeService(t, s, fmt.Sprintf("cutoff-%d", i), i%2 == 0))
		}
		for _, w := range writes {
			checkFailed(t, w, deadline)
		}
		trellistest.Eventually(t, 20*time.Second, "reads say stale", func() error {
			if staleHeader(t, s) == "" {
				return fmt.Errorf("no %s header", "Trellis-Stale")
			}
			return nil
		})
		heal()
		trellistest.Eventually(t, 90*time.Second, "writes work again", func() error {
			if w := writeService(t, s, "cutoff-back", true); w.code != http.StatusOK {
				return fmt.Errorf("%d %s %s", w.code, w.outcome, w.msg)
			}
			return nil
		})
		applied := settle(t, s, ms, writes)
		report(t, "server cut off", writes, applied)
	})
}

func report(t *testing.T, what string, writes []rawWrite, applied int) {
	t.Helper()
	count := map[string]int{}
	var slowest time.Duration
	for _, w := range writes {
		count[w.outcome]++
		slowest = max(slowest, w.took)
		t.Logf("%s: %s in %v: %s", w.name, w.outcome, w.took.Round(time.Millisecond), w.msg)
	}
	t.Logf("%s: %d writes answered not-applied %d, unknown %d; slowest answer %v; applied after the outage: %d",
		what, len(writes), count["not-applied"], count["unknown"], slowest.Round(time.Millisecond), applied)
}

// healthz returns the status of the server's GET /healthz, asked without
// a token.
func healthz(t *testing.T, s *server) int {
	t.Helper()
	code, err := healthzCode(s)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// healthzCode is healthz, with an error where the server does not answer.
func healthzCode(s *server) (int, error) {
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: s.api.TLSConfig()}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("https://" + s.addr + "/healthz")
	if err != nil {
		return 0, fmt.Errorf("GET /healthz: %w", err)
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
