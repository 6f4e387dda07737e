//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// vpcs are two networks ("VPCs"), each a bridge with its own subnet, whose
// hosts route to each other through this namespace. Peered, it forwards
// everything between them; otherwise only connections to the network
// gateways' addresses (and their answers) cross, as between two VPCs joined
// by nothing but the gateways' load balancers.
type vpcs struct {
	a, b  *testNet
	chain string
}

// newVPCs makes the two networks 10.231.na.0/24 and 10.231.nb.0/24 with the
// hosts named, each host routing through its bridge's address.
func newVPCs(t *testing.T, na, nb int, namesA, namesB []string) *vpcs {
	t.Helper()
	v := &vpcs{a: newTestNet(t, na, namesA...), b: newTestNet(t, nb, namesB...), chain: fmt.Sprintf("TRXVPC%d", na)}
	for _, tn := range []*testNet{v.a, v.b} {
		for _, h := range tn.hosts {
			h.run(t, "ip", "route", "add", "default", "via", tn.gw)
		}
	}
	old, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile("/proc/sys/net/ipv4/ip_forward", old, 0o644) })
	ipt := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
			t.Fatalf("iptables %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	exec.Command("iptables", "-D", "FORWARD", "-j", v.chain).Run()
	exec.Command("iptables", "-F", v.chain).Run()
	exec.Command("iptables", "-X", v.chain).Run()
	ipt("-N", v.chain)
	ipt("-I", "FORWARD", "1", "-j", v.chain)
	t.Cleanup(func() {
		exec.Command("iptables", "-D", "FORWARD", "-j", v.chain).Run()
		exec.Command("iptables", "-F", v.chain).Run()
		exec.Command("iptables", "-X", v.chain).Run()
	})
	return v
}

// open lets hosts of each network reach the given hosts of the other, and
// their answers back; drop refuses everything else between the networks.
// Rules are stateless so that they hold whatever conntrack has seen.
func (v *vpcs) open(t *testing.T, hosts ...*host) {
	t.Helper()
	for _, h := range hosts {
		in, out := v.a.bridge, v.b.bridge // into b's host from a
		if !v.inB(h) {
			in, out = out, in
		}
		for _, rule := range [][]string{
			{"-A", v.chain, "-i", in, "-o", out, "-d", h.ip, "-j", "ACCEPT"},
			{"-A", v.chain, "-i", out, "-o", in, "-s", h.ip, "-j", "ACCEPT"},
		} {
			if out, err := exec.Command("iptables", rule...).CombinedOutput(); err != nil {
				t.Fatalf("iptables %v: %v: %s", rule, err, out)
			}
		}
	}
}

// peer lets everything cross, as a VPC peering connection would.
func (v *vpcs) peer(t *testing.T) {
	t.Helper()
	if out, err := exec.Command("iptables", "-A", v.chain, "-j", "ACCEPT").CombinedOutput(); err != nil {
		t.Fatalf("iptables: %v: %s", err, out)
	}
}

// drop refuses what open did not allow between the two networks.
func (v *vpcs) drop(t *testing.T) {
	t.Helper()
	for _, dir := range [][2]string{{v.a.bridge, v.b.bridge}, {v.b.bridge, v.a.bridge}} {
		if out, err := exec.Command("iptables", "-A", v.chain, "-i", dir[0], "-o", dir[1], "-j", "DROP").CombinedOutput(); err != nil {
			t.Fatalf("iptables: %v: %s", err, out)
		}
	}
}

func (v *vpcs) inB(h *host) bool {
	for _, x := range v.b.hosts {
		if x == h {
			return true
		}
	}
	return false
}

// buildExample builds the cross-vpc example's programs once per test run.
var buildExample = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "trellis-crossvpc")
	if err != nil {
		return "", err
	}
	for _, prog := range []string{"frontend", "backend"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, prog), "../examples/cross-vpc/"+prog).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("build %s: %v: %s", prog, err, out)
		}
	}
	return dir, os.Chmod(dir, 0o755)
})

// startProgram runs one of the example's programs in h.
func startProgram(t *testing.T, h *host, prog string, env ...string) *exec.Cmd {
	t.Helper()
	dir, err := buildExample()
	if err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(t.TempDir(), prog+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", h.ns, filepath.Join(dir, prog))
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("---- %s in %s ----\n%s", prog, h.ns, tail(string(b), 20))
		}
	})
	return cmd
}

// frontendPage is what the example's frontend answers.
type frontendPage struct {
	Frontend string `json:"frontend"`
	Backends []struct {
		URL    string `json:"url"`
		Status int    `json:"status"`
		Error  string `json:"error"`
		Answer struct {
			Service  string `json:"service"`
			Instance string `json:"instance"`
			Network  string `json:"network"`
			Caller   string `json:"caller"`
		} `json:"answer"`
	} `json:"backends"`
}

func (p *frontendPage) backend(service string) (int, string, string, string, string) {
	for _, b := range p.Backends {
		if strings.Contains(b.URL, "//"+service+".") {
			return b.Status, b.Answer.Instance, b.Answer.Network, b.Answer.Caller, b.Error
		}
	}
	return 0, "", "", "", "no such backend"
}

// crossVPC is the App Mesh workshop's cross-VPC pattern, run in network
// namespaces: three frontend VMs and crystal in vpc-a, nodejs in vpc-b, and
// the control plane on the host between them.
type crossVPC struct {
	v       *vpcs
	s       *server
	fe      []*host
	crystal []*host
	nodejs  []*host
	gwA     *host
	gwB     []*host
	outside *host
	gws     map[*host]*sidecar
	apps    map[*host]*exec.Cmd
	proxies map[*host]*proc
	dnsAddr string // the control plane's DNS listener
	hostDNS string // the VPC's own resolver, which knows corp.example
	shared  string // a directory every host reads (binary, CA)
}

const (
	xvpcDomain = "appmeshworkshop.hosted.local"
	xvpcPort   = 3000
)

func startCrossVPC(t *testing.T, na, nb int, gateways bool) *crossVPC {
	t.Helper()
	needNetns(t, "iptables", "dig")
	namesA := []string{"fe1", "fe2", "fe3", "crystal1", "crystal2", "gwa1", "outside"}
	namesB := []string{"nodejs1", "nodejs2", "gwb1", "gwb2"}
	x := &crossVPC{v: newVPCs(t, na, nb, namesA, namesB), gws: map[*host]*sidecar{}, apps: map[*host]*exec.Cmd{}, proxies: map[*host]*proc{}}
	a, b := x.v.a.hosts, x.v.b.hosts
	x.fe, x.crystal, x.gwA, x.outside = a[0:3], a[3:5], a[5], a[6]
	x.nodejs, x.gwB = b[0:2], b[2:4]
	if gateways {
		x.v.open(t, x.gwA, x.gwB[0], x.gwB[1])
		x.v.drop(t)
	} else {
		x.v.peer(t)
	}

	x.hostDNS = x.outside.ip + ":53"
	serveHostDNS(t, x.outside, x.hostDNS)
	dnsPort := trellistest.FreePort(t)
	x.dnsAddr = fmt.Sprintf("%s:%d", x.v.a.gw, dnsPort)
	x.s = startServerOn(t, fmt.Sprintf("%s:%d", x.v.a.gw, trellistest.FreePort(t)), "--dns-listen", x.dnsAddr)
	mesh := fmt.Sprintf(`kind: Mesh
name: default
spec:
  defaultPolicy: deny
  dns: {domains: [%s]}
---
kind: Service
name: frontend
spec: {protocol: http, port: %d}
---
kind: Service
name: crystal
spec: {protocol: http, port: %d}
---
kind: Service
name: nodejs
spec: {protocol: http, port: %d}
`, xvpcDomain, xvpcPort, xvpcPort, xvpcPort)
	if gateways {
		mesh += `---
kind: Gateway
name: gw-vpc-a
spec:
  listeners: [{port: 15443, protocol: network, network: vpc-a}]
---
kind: Gateway
name: gw-vpc-b
spec:
  listeners: [{port: 15443, protocol: network, network: vpc-b}]
`
	}
	applyYAML(t, x.s, mesh)
	x.s.mustCLI(t, "intention", "allow", "frontend", "crystal")
	x.s.mustCLI(t, "intention", "allow", "frontend", "nodejs")

	if gateways {
		x.startGateway(t, x.gwA, "gw-vpc-a", "vpc-a")
		for _, h := range x.gwB {
			x.startGateway(t, h, "gw-vpc-b", "vpc-b")
		}
	}
	for _, h := range x.crystal {
		x.startBackend(t, h, "crystal", "vpc-a")
	}
	for _, h := range x.nodejs {
		x.startBackend(t, h, "nodejs", "vpc-b")
	}
	for _, h := range x.fe {
		x.startFrontend(t, h)
	}
	x.s.waitInstances(t, 60*time.Second, "crystal", "crystal", 2)
	x.s.waitInstances(t, 60*time.Second, "nodejs", "nodejs", 2)
	x.s.waitInstances(t, 60*time.Second, "frontends", "frontend", 3)
	return x
}

// proxyArgs are the flags every sidecar and gateway of the test shares.
func (x *crossVPC) proxyArgs(t *testing.T, service string) []string {
	return []string{"--server", x.s.addr, "--ca-file", x.s.caFile, "--token-file", x.s.tokenFile(t, service),
		"--state-dir", t.TempDir(), "--log-level", "debug"}
}

func (x *crossVPC) startGateway(t *testing.T, h *host, name, network string) {
	t.Helper()
	admin := 15000
	args := append([]string{"gateway", "--name", name, "--network", network, "--listen-addr", h.ip,
		"--advertise", h.ip, "--admin-port", strconv.Itoa(admin)}, x.proxyArgs(t, name)...)
	x.gws[h] = &sidecar{proc: startWrapped(t, name+"-"+h.ns, h.wrap(0), nil, args...), admin: fmt.Sprintf("127.0.0.1:%d", admin)}
}

func (x *crossVPC) startBackend(t *testing.T, h *host, service, network string) {
	t.Helper()
	const appPort = 8080
	x.apps[h] = startProgram(t, h, "backend", "PORT="+strconv.Itoa(appPort), "TRELLIS_SERVICE="+service,
		"TRELLIS_INSTANCE="+strings.TrimPrefix(h.ns, "trellis-"), "TRELLIS_NETWORK="+network)
	args := append([]string{"proxy", "--service", service, "--instance", strings.TrimPrefix(h.ns, "trellis-"),
		"--network", network, "--app-port", strconv.Itoa(appPort), "--public-addr", "0.0.0.0", "--public-port", "15443",
		"--advertise", h.ip, "--health-path", "/health", "--health-interval", "250ms",
		"--edge-port", "8443", "--edge-addr", h.ip, "--edge-dns-name", service + "." + xvpcDomain,
		"--admin-port", "15000"}, x.proxyArgs(t, service)...)
	x.proxies[h] = startWrapped(t, "proxy-"+h.ns, h.wrap(0), nil, args...)
}

// startFrontend runs a frontend VM: the app calls its backends by name,
// the host's resolver is its sidecar's DNS (as a VM's resolv.conf would
// say after `trellis inject systemd`), and the sidecar's upstream
// listeners sit at the Service's port on loopback addresses of their own.
func (x *crossVPC) startFrontend(t *testing.T, h *host) {
	t.Helper()
	etc := filepath.Join("/etc/netns", h.ns)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const appPort = 8080
	x.apps[h] = startProgram(t, h, "frontend", "PORT="+strconv.Itoa(appPort), "TRELLIS_SERVICE=frontend",
		"TRELLIS_INSTANCE="+strings.TrimPrefix(h.ns, "trellis-"), "TRELLIS_NETWORK=vpc-a")
	args := append([]string{"proxy", "--service", "frontend", "--instance", strings.TrimPrefix(h.ns, "trellis-"),
		"--network", "vpc-a", "--app-port", strconv.Itoa(appPort), "--public-addr", "0.0.0.0", "--public-port", "15443",
		"--advertise", h.ip, "--health-path", "/health", "--health-interval", "250ms",
		"--upstream", fmt.Sprintf("crystal:127.0.0.2:%d", xvpcPort), "--upstream", fmt.Sprintf("nodejs:127.0.0.3:%d", xvpcPort),
		"--dns-listen", "127.0.0.1:53", "--dns-mode", "local", "--dns-upstream", x.hostDNS,
		"--admin-port", "15000"}, x.proxyArgs(t, "frontend")...)
	startWrapped(t, "proxy-"+h.ns, h.wrap(0), nil, args...)
}

// page asks frontend VM h for its page.
func (x *crossVPC) page(h *host) (*frontendPage, error) {
	c := h.client()
	resp, err := c.Get("http://127.0.0.1:8080/")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var p frontendPage
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		return nil, fmt.Errorf("frontend page: %w", err)
	}
	return &p, nil
}

// dig asks the DNS server at addr from h and returns dig's short answer
// and the status line's status.
func dig(t *testing.T, h *host, addr, qtype, name string, extra ...string) (string, string) {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	args := append([]string{"@" + host, "-p", port, "+time=2", "+tries=1", qtype, name}, extra...)
	out, _ := exec.Command("ip", append([]string{"netns", "exec", h.ns, "dig"}, args...)...).CombinedOutput()
	status := ""
	if i := strings.Index(string(out), "status: "); i >= 0 {
		status, _, _ = strings.Cut(string(out)[i+len("status: "):], ",")
	}
	var answers []string
	inAnswer := false
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, ";; ANSWER SECTION"):
			inAnswer = true
		case inAnswer && strings.TrimSpace(line) == "":
			inAnswer = false
		case inAnswer:
			f := strings.Fields(line)
			answers = append(answers, strings.Join(f[4:], " "))
		}
	}
	return strings.Join(answers, ","), status
}

// TestCrossNetworkThroughGateways is the App Mesh cross-VPC pattern with
// the two VPCs joined only through network gateways: frontends in vpc-a
// call crystal (vpc-a) and nodejs (vpc-b) by DNS name, nodejs through
// vpc-b's two gateways, which see only SNI and hold only their own
// identity; losing one gateway fails nothing, losing both is a fast 503
// with the reason, and the first gateway back brings the traffic back.
func TestCrossNetworkThroughGateways(t *testing.T) {
	x := startCrossVPC(t, 21, 22, true)
	fe := x.fe[0]
	t.Run("dns", func(t *testing.T) { checkDNS(t, x) })

	// Every frontend reaches both backends by name; nodejs sees the
	// frontend's SPIFFE ID, from across the gateway.
	for _, h := range x.fe {
		trellistest.Eventually(t, 30*time.Second, h.ns+" reaches both backends", func() error {
			p, err := x.page(h)
			if err != nil {
				return err
			}
			for _, want := range []struct{ svc, network string }{{"crystal", "vpc-a"}, {"nodejs", "vpc-b"}} {
				status, inst, network, caller, why := p.backend(want.svc)
				if status != http.StatusOK || network != want.network || !strings.HasPrefix(inst, want.svc) {
					return fmt.Errorf("%s: status %d, instance %q, network %q: %s", want.svc, status, inst, network, why)
				}
				if !strings.Contains(caller, "/svc/frontend") {
					return fmt.Errorf("%s saw caller %q, want the frontend's SPIFFE ID", want.svc, caller)
				}
			}
			return nil
		})
	}

	// The gateways counted connections across; neither holds a key of
	// any service but its own.
	var crossed float64
	for _, h := range x.gwB {
		m := metricsOf(t, h, x.gws[h].admin)
		crossed += sumMetric(m, "trellis_tcp_connections_total", `direction="network"`, `result="ok"`)
		certs := adminGet(t, h, x.gws[h].admin, "/certs")
		if strings.Contains(certs, "/svc/nodejs") || strings.Contains(certs, "/svc/frontend") || !strings.Contains(certs, "/svc/gw-vpc-b") {
			t.Errorf("gateway %s holds certificates other than its own: %s", h.ns, head(certs, 20))
		}
	}
	if crossed == 0 {
		t.Errorf("vpc-b's gateways counted no connection")
	}

	// Load on the frontend while one of vpc-b's two gateways stops: no
	// request fails.
	var ok, failed atomic.Int64
	var lastErr atomic.Value
	ctx, stopLoad := context.WithCancel(context.Background())
	var load sync.WaitGroup
	for range 4 {
		load.Go(func() {
			for ctx.Err() == nil {
				p, err := x.page(fe)
				if err == nil {
					if status, _, _, _, why := p.backend("nodejs"); status != http.StatusOK {
						err = fmt.Errorf("nodejs: %d %s", status, why)
					}
				}
				if err != nil {
					failed.Add(1)
					lastErr.Store(err.Error())
					continue
				}
				ok.Add(1)
			}
		})
	}
	waitCount(t, &ok, 20, "requests before the stop")
	x.gws[x.gwB[0]].kill(syscall.SIGTERM)
	before := ok.Load()
	waitCount(t, &ok, before+50, "requests after the stop")
	stopLoad()
	load.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed while one gateway stopped; last: %v", n, n+ok.Load(), lastErr.Load())
	}

	// Both down: a fast 503 that says why.
	x.gws[x.gwB[1]].kill(syscall.SIGTERM)
	trellistest.Eventually(t, 15*time.Second, "503 with the reason once vpc-b has no gateway", func() error {
		p, err := x.page(fe)
		if err != nil {
			return err
		}
		status, _, _, _, why := p.backend("nodejs")
		if status != http.StatusServiceUnavailable || !strings.Contains(why, "gateway") {
			return fmt.Errorf("nodejs: %d %q", status, why)
		}
		return nil
	})
	start := time.Now()
	if _, err := x.page(fe); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the 503 took %v, want it at once", d)
	}
	if p, _ := x.page(fe); p != nil {
		if status, _, _, _, _ := p.backend("crystal"); status != http.StatusOK {
			t.Errorf("crystal, in the frontend's own network, failed too: %d", status)
		}
	}

	// One gateway back: traffic back.
	x.gws[x.gwB[0]].run()
	trellistest.Eventually(t, 30*time.Second, "nodejs again through the restarted gateway", func() error {
		p, err := x.page(fe)
		if err != nil {
			return err
		}
		if status, _, _, _, why := p.backend("nodejs"); status != http.StatusOK {
			return fmt.Errorf("nodejs: %d %s", status, why)
		}
		return nil
	})
}

// TestCrossNetworkPeered is the same mesh with the VPCs routed to each
// other and no gateway: sidecars call across the networks directly.
func TestCrossNetworkPeered(t *testing.T) {
	x := startCrossVPC(t, 23, 24, false)
	trellistest.Eventually(t, 30*time.Second, "frontend reaches nodejs directly", func() error {
		p, err := x.page(x.fe[0])
		if err != nil {
			return err
		}
		status, _, network, caller, why := p.backend("nodejs")
		if status != http.StatusOK || network != "vpc-b" || !strings.Contains(caller, "/svc/frontend") {
			return fmt.Errorf("nodejs: %d %q %q %s", status, network, caller, why)
		}
		return nil
	})
	out := x.s.mustCLI(t, "get", "proxies")
	if !strings.Contains(out, "direct") {
		t.Errorf("trellis get proxies does not show the direct path:\n%s", out)
	}
}

// checkDNS asks the mesh's DNS what its users would: an operator's host
// outside the mesh asks the control plane, a frontend VM's app asks its
// sidecar. It kills one crystal app on the way.
func checkDNS(t *testing.T, x *crossVPC) {
	crystalIPs := x.crystal[0].ip + "," + x.crystal[1].ip
	name := "crystal." + xvpcDomain

	// Outside the mesh: the healthy instances' edge addresses, SRV with
	// the edge port, and nothing for names outside the mesh's domains.
	trellistest.Eventually(t, 15*time.Second, "both crystal instances in the answer", func() error {
		got, status := dig(t, x.outside, x.dnsAddr, "A", name)
		if status != "NOERROR" || !sameSet(got, crystalIPs) {
			return fmt.Errorf("%s %q, want %q", status, got, crystalIPs)
		}
		return nil
	})
	if got, _ := dig(t, x.outside, x.dnsAddr, "SRV", name); !strings.Contains(got, " 8443 ") {
		t.Errorf("SRV answer %q has no edge port 8443", got)
	}
	if _, status := dig(t, x.outside, x.dnsAddr, "A", "example.com"); status != "REFUSED" {
		t.Errorf("the server answered a name outside the mesh with %s, want REFUSED", status)
	}
	if _, status := dig(t, x.outside, x.dnsAddr, "A", "nosuch."+xvpcDomain); status != "NXDOMAIN" {
		t.Errorf("an unknown mesh name got %s, want NXDOMAIN", status)
	}
	x.proxies[x.crystal[1]].kill(syscall.SIGKILL)
	killed := time.Now()
	trellistest.Eventually(t, 10*time.Second, "the killed instance leaves the answers", func() error {
		got, _ := dig(t, x.outside, x.dnsAddr, "A", name)
		if got != x.crystal[0].ip {
			return fmt.Errorf("answer %q, want %s", got, x.crystal[0].ip)
		}
		return nil
	})
	t.Logf("killed instance left the answers after %v", time.Since(killed).Round(100*time.Millisecond))

	// In a frontend VM: its upstreams by name, NXDOMAIN for a mesh name it
	// may not call, other names through the resolver it was given.
	fe := x.fe[0]
	if got, status := dig(t, fe, "127.0.0.1:53", "A", "nodejs."+xvpcDomain); status != "NOERROR" || got != "127.0.0.3" {
		t.Errorf("the sidecar answered nodejs with %s %q, want 127.0.0.3", status, got)
	}
	if _, status := dig(t, fe, "127.0.0.1:53", "A", "frontend."+xvpcDomain); status != "NXDOMAIN" {
		t.Errorf("a mesh name the app may not call got %s, want NXDOMAIN", status)
	}
	if got, status := dig(t, fe, "127.0.0.1:53", "A", name); status != "NOERROR" || got != "127.0.0.2" {
		t.Errorf("the sidecar answered crystal with %s %q", status, got)
	}
	// Every other name goes to the VPC's resolver, as the VM's did before.
	if got, status := dig(t, fe, "127.0.0.1:53", "A", "db.corp.example"); status != "NOERROR" || got != "192.0.2.7" {
		t.Errorf("an outside name got %s %q through the sidecar, want the VPC resolver's 192.0.2.7", status, got)
	}
	if _, status := dig(t, fe, "127.0.0.1:53", "A", "nosuch.corp.example"); status != "NXDOMAIN" {
		t.Errorf("an unknown outside name got %s through the sidecar, want the VPC resolver's NXDOMAIN", status)
	}
}

// serveHostDNS runs the VPC's own resolver in h at addr: it knows
// db.corp.example, and nothing else.
func serveHostDNS(t *testing.T, h *host, addr string) {
	t.Helper()
	var pc net.PacketConn
	if err := h.do(func() (err error) { pc, err = net.ListenPacket("udp4", addr); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		if q := req.Question; len(q) == 1 && strings.EqualFold(q[0].Name, "db.corp.example.") && q[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR("db.corp.example. 60 IN A 192.0.2.7")
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	done := make(chan struct{})
	go func() { defer close(done); srv.ActivateAndServe() }()
	t.Cleanup(func() { srv.Shutdown(); <-done })
}

func sameSet(a, b string) bool {
	as, bs := strings.Split(a, ","), strings.Split(b, ",")
	if len(as) != len(bs) {
		return false
	}
	seen := map[string]int{}
	for _, s := range as {
		seen[s]++
	}
	for _, s := range bs {
		seen[s]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

// waitCount waits until c reaches n.
func waitCount(t *testing.T, c *atomic.Int64, n int64, what string) {
	t.Helper()
	trellistest.Eventually(t, 60*time.Second, what, func() error {
		if v := c.Load(); v < n {
			return fmt.Errorf("%d of %d", v, n)
		}
		return nil
	})
}

// adminGet fetches path from an admin listener inside h.
func adminGet(t *testing.T, h *host, admin, path string) string {
	t.Helper()
	body, err := fetch(h.client(), "http://"+admin+path, "")
	if err != nil {
		t.Fatalf("%s %s: %v", h.ns, path, err)
	}
	return body
}

// metricsOf returns the Prometheus text of an admin listener inside h.
func metricsOf(t *testing.T, h *host, admin string) string {
	return adminGet(t, h, admin, "/metrics")
}

// sumMetric adds the samples of the named metric in a Prometheus text
// that have every label given (such as `direction="network"`).
func sumMetric(text, name string, labels ...string) float64 {
	var sum float64
lines:
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name) || (len(line) > len(name) && line[len(name)] != '{' && line[len(name)] != ' ') {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue lines
			}
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}
