package redirect

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// The DNS rules at work in a network namespace of their own: an app's
// query to a resolver's address is answered by the proxy's listener on
// 127.0.0.1, the proxy's own query reaches the resolver, and after
// Remove the app's reaches it again.
func TestDNSRedirectInNamespace(t *testing.T) {
	needNetns(t)
	for i, dnsOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("dnsOnly=%v", dnsOnly), func(t *testing.T) {
			testDNSRedirect(t, fmt.Sprintf("hdns-%d-%d", os.Getpid()%100000, i), dnsOnly)
		})
	}
}

func testDNSRedirect(t *testing.T, name string, dnsOnly bool) {
	const proxyUID = 1337
	ns := newNamespace(t, name)
	// The resolver's address, on loopback: DNS is redirected whatever the
	// destination (127.0.0.53 of systemd-resolved is local too).
	ns.ip(t, "addr", "add", "192.0.2.53/32", "dev", "lo")

	// The real resolver answers 192.0.2.1, the proxy's 127.0.0.7.
	real := ns.serveDNS(t, "192.0.2.53:53", "192.0.2.1")
	proxy := ns.serveDNS(t, "127.0.0.1:0", "127.0.0.7")
	r := Rules{ProxyUID: proxyUID, IngressPort: 15006, EgressPort: 15001, DNSPort: int(proxy.Port()), DNSOnly: dnsOnly}
	run := func(ctx context.Context, stdin, name string, args ...string) (string, error) {
		return Exec(ctx, stdin, "ip", append([]string{"netns", "exec", ns.name, name}, args...)...)
	}
	ctx := t.Context()
	if err := r.Apply(ctx, run); err != nil {
		t.Fatal(err)
	}
	// Applying twice is applying once.
	if err := r.Apply(ctx, run); err != nil {
		t.Fatal(err)
	}
	rules, _ := run(ctx, "", "iptables", "-t", "nat", "-S", "OUTPUT")
	if n := strings.Count(rules, "-j TRELLIS_DNS"); n != 2 {
		t.Errorf("OUTPUT has %d DNS jumps after two applies, want 2:\n%s", n, rules)
	}

	resolver := real.String()
	for _, proto := range []string{"udp", "tcp"} {
		if got := ns.query(t, proto, resolver, 0); got != "127.0.0.7" {
			t.Errorf("app's %s query to %s answered %s, want the proxy's 127.0.0.7", proto, resolver, got)
		}
		if got := ns.query(t, proto, resolver, proxyUID); got != "192.0.2.1" {
			t.Errorf("proxy's %s query to %s answered %s, want the resolver's 192.0.2.1", proto, resolver, got)
		}
	}
	if err := Remove(ctx, run); err != nil {
		t.Fatal(err)
	}
	if got := ns.query(t, "udp", resolver, 0); got != "192.0.2.1" {
		t.Errorf("after Remove the app's query answered %s, want the resolver's 192.0.2.1", got)
	}
	all, _ := run(ctx, "", "iptables", "-t", "nat", "-S")
	if strings.Contains(all, "TRELLIS") {
		t.Errorf("rules left after Remove:\n%s", all)
	}
}

// needNetns skips unless the test can make namespaces; where CI sets
// TRELLIS_REQUIRE_NETNS it fails instead.
func needNetns(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-restore"} {
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

type namespace struct{ name string }

// newNamespace makes a namespace with its loopback up, deleted when the
// test ends.
func newNamespace(t *testing.T, name string) *namespace {
	t.Helper()
	exec.Command("ip", "netns", "del", name).Run() // a killed run's leftover
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ns := &namespace{name: name}
	ns.ip(t, "link", "set", "lo", "up")
	return ns
}

func (ns *namespace) ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", append([]string{"-n", ns.name}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", ns.name, strings.Join(args, " "), err, out)
	}
}

// do runs f on a thread inside ns with the file system UID fsuid (the one
// iptables's owner match sees on the sockets f makes). Sockets belong to
// the namespace and owner they were made with, so they keep both.
func (ns *namespace) do(fsuid int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + ns.name)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.name, err)
			return
		}
		unix.Setfsuid(fsuid)
		err = f()
		unix.Setfsuid(0)
		// A thread that cannot go back dies with its goroutine, locked.
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// serveDNS serves UDP and TCP DNS on addr inside ns, answering every A
// question with answer; it returns the address served.
func (ns *namespace) serveDNS(t *testing.T, addr, answer string) netip.AddrPort {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 && q.Question[0].Qtype == dns.TypeA {
			m.Answer = []dns.RR{&dns.A{
				Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
				A:   net.ParseIP(answer),
			}}
		}
		w.WriteMsg(m)
	})
	var pc net.PacketConn
	var l net.Listener
	err := ns.do(0, func() (err error) {
		if pc, err = net.ListenPacket("udp4", addr); err != nil {
			return err
		}
		// TCP on the UDP socket's port (chosen by the kernel for :0).
		l, err = net.Listen("tcp4", pc.LocalAddr().String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		go s.ActivateAndServe()
		t.Cleanup(func() { s.Shutdown() })
	}
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// query asks server for the A record of app.example. over proto from
// inside ns, from a socket of uid (0: root, as an app), and returns the
// answer's address.
func (ns *namespace) query(t *testing.T, proto, server string, uid int) string {
	t.Helper()
	var c net.Conn
	if err := ns.do(uid, func() (err error) {
		c, err = net.DialTimeout(proto+"4", server, 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("%s dial %s as uid %d: %v", proto, server, uid, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	co := &dns.Conn{Conn: c}
	q := new(dns.Msg)
	q.SetQuestion("app.example.", dns.TypeA)
	if err := co.WriteMsg(q); err != nil {
		t.Fatalf("%s query to %s as uid %d: %v", proto, server, uid, err)
	}
	m, err := co.ReadMsg()
	if err != nil {
		t.Fatalf("%s query to %s as uid %d: %v", proto, server, uid, err)
	}
	if len(m.Answer) != 1 {
		t.Fatalf("%s query to %s as uid %d: %d answers", proto, server, uid, len(m.Answer))
	}
	return m.Answer[0].(*dns.A).A.String()
}
