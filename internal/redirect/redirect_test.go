package redirect

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestScript(t *testing.T) {
	r := Rules{ProxyUID: 1337, IngressPort: 15006, EgressPort: 15001, AppPorts: []int{8080, 9090},
		ExcludeAddrs: []string{"10.0.0.0/8", "169.254.170.2", "10.1.2.3/8"}, ExcludePorts: []int{5432}}
	want := `*nat
:TRELLIS_INGRESS - [0:0]
:TRELLIS_EGRESS - [0:0]
:TRELLIS_DNS - [0:0]
-A TRELLIS_INGRESS -p tcp -m multiport --dports 8080,9090 -j REDIRECT --to-ports 15006
-A TRELLIS_EGRESS -m owner --uid-owner 1337 -j RETURN
-A TRELLIS_EGRESS -d 169.254.170.2/32 -j RETURN
-A TRELLIS_EGRESS -d 169.254.169.254/32 -j RETURN
-A TRELLIS_EGRESS -d 10.0.0.0/8 -j RETURN
-A TRELLIS_EGRESS -p tcp -m multiport --dports 5432 -j RETURN
-A TRELLIS_EGRESS -p tcp -j REDIRECT --to-ports 15001
COMMIT
`
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := r.Script(); got != want {
		t.Errorf("script:\n%s\nwant:\n%s", got, want)
	}
}

func TestScriptDNS(t *testing.T) {
	r := Rules{ProxyUID: 1337, IngressPort: 15006, EgressPort: 15001, DNSPort: 15053, ExcludeUIDs: []int{991, 1337}}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	s := r.Script()
	for _, want := range []string{
		"-A TRELLIS_EGRESS -m owner --uid-owner 991 -j RETURN\n",
		"-A TRELLIS_DNS -m owner --uid-owner 1337 -j RETURN\n-A TRELLIS_DNS -m owner --uid-owner 991 -j RETURN\n" +
			"-A TRELLIS_DNS -p udp --dport 53 -j REDIRECT --to-ports 15053\n" +
			"-A TRELLIS_DNS -p tcp --dport 53 -j REDIRECT --to-ports 15053\nCOMMIT\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	if n := strings.Count(s, "--uid-owner 1337"); n != 2 {
		t.Errorf("proxy UID excluded %d times, want once per chain (egress, DNS):\n%s", n, s)
	}
}

// Issue 23: --print showed the chains but not the jumps into them, so a
// reader could not see what an install changes in PREROUTING and OUTPUT.
func TestPrintShowsEveryJump(t *testing.T) {
	r := Rules{ProxyUID: 1337, IngressPort: 15006, EgressPort: 15001, AppPorts: []int{8080}}
	p := r.Print()
	if !strings.HasPrefix(p, r.Script()) {
		t.Errorf("print does not start with the script:\n%s", p)
	}
	for _, want := range []string{
		"# iptables -t nat -A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j TRELLIS_INGRESS\n",
		"# iptables -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j TRELLIS_EGRESS\n",
	} {
		if !strings.Contains(p, want) {
			t.Errorf("print lacks %q:\n%s", want, p)
		}
	}
	if strings.Contains(p, "TRELLIS_DNS\n#") || strings.Contains(p, "--dport 53") {
		t.Errorf("DNS jumps printed without a DNS port:\n%s", p)
	}
	r.DNSPort = 15053
	p = r.Print()
	for _, want := range []string{
		"# iptables -t nat -I OUTPUT 1 -p udp --dport 53 -j TRELLIS_DNS\n",
		"# iptables -t nat -I OUTPUT 1 -p tcp --dport 53 -j TRELLIS_DNS\n",
	} {
		if !strings.Contains(p, want) {
			t.Errorf("print lacks %q:\n%s", want, p)
		}
	}
}

func TestDNSOnly(t *testing.T) {
	r := Rules{ProxyUID: 1337, DNSOnly: true, DNSPort: 15053, AppPorts: []int{8080}}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	want := `*nat
:TRELLIS_DNS - [0:0]
-A TRELLIS_DNS -m owner --uid-owner 1337 -j RETURN
-A TRELLIS_DNS -p udp --dport 53 -j REDIRECT --to-ports 15053
-A TRELLIS_DNS -p tcp --dport 53 -j REDIRECT --to-ports 15053
COMMIT
`
	if got := r.Script(); got != want {
		t.Errorf("script:\n%s\nwant:\n%s", got, want)
	}
	f := &fakeIptables{present: map[string]bool{}}
	if err := r.Apply(context.Background(), f.run); err != nil {
		t.Fatal(err)
	}
	for _, c := range f.cmds {
		if strings.Contains(c, "TRELLIS_INGRESS") || strings.Contains(c, "TRELLIS_EGRESS") {
			t.Errorf("DNS only, but ran %q", c)
		}
	}
	if err := (Rules{ProxyUID: 1337, DNSOnly: true}).Validate(); err == nil || !strings.Contains(err.Error(), "no DNS port") {
		t.Errorf("DNS only without a port: %v", err)
	}
}

func TestScriptSplitsPortLists(t *testing.T) {
	r := Rules{ProxyUID: 1, IngressPort: 15006, EgressPort: 15001}
	for p := 1; p <= 20; p++ {
		r.AppPorts = append(r.AppPorts, 8000+p)
	}
	s := r.Script()
	if n := strings.Count(s, "-j REDIRECT --to-ports 15006"); n != 2 {
		t.Errorf("20 app ports make %d rules, want 2 (multiport takes 15):\n%s", n, s)
	}
	if !strings.Contains(s, "--dports 8016,8017,8018,8019,8020 ") {
		t.Errorf("second rule missing:\n%s", s)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Rules
		want []string
	}{
		{"root", Rules{ProxyUID: 0, IngressPort: 1, EgressPort: 2}, []string{"proxy UID: 0 (root)"}},
		{"ports", Rules{ProxyUID: 5, IngressPort: 0, EgressPort: 70000}, []string{"ingress port: 0 is not a port", "egress port: 70000 is not a port"}},
		{"same ports", Rules{ProxyUID: 5, IngressPort: 9, EgressPort: 9}, []string{"ingress and egress ports are both 9"}},
		{"app port is the proxy's", Rules{ProxyUID: 5, IngressPort: 1, EgressPort: 2, AppPorts: []int{2}}, []string{"app port 2 is one of the proxy's"}},
		{"DNS port", Rules{ProxyUID: 5, IngressPort: 1, EgressPort: 2, DNSPort: 2}, []string{"DNS port 2 is one of the proxy's"}},
		{"DNS port 53", Rules{ProxyUID: 5, IngressPort: 1, EgressPort: 2, DNSPort: 53}, []string{"DNS port: 53 needs no redirect"}},
		{"DNS port range", Rules{ProxyUID: 5, IngressPort: 1, EgressPort: 2, DNSPort: 65536}, []string{"DNS port: 65536 is not a port"}},
		{"excluded root", Rules{ProxyUID: 5, IngressPort: 1, EgressPort: 2, ExcludeUIDs: []int{0, -1}}, []string{"excluded UID: 0 (root)", "excluded UID: -1 is negative"}},
		{"bad address", Rules{ProxyUID: 5, IngressPort: 1, EgressPort: 2, ExcludeAddrs: []string{"fd00::1", "ten"}}, []string{`excluded address "fd00::1"`, `excluded address "ten"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.r.Validate()
			if err == nil {
				t.Fatal("valid, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// fakeIptables records commands; a check (-C) of rule in present succeeds.
type fakeIptables struct {
	cmds    []string
	present map[string]bool
}

func (f *fakeIptables) run(_ context.Context, stdin, name string, args ...string) (string, error) {
	cmd := name + " " + strings.Join(args, " ")
	f.cmds = append(f.cmds, cmd)
	if len(args) > 2 && (args[2] == "-C" || args[2] == "-D" || args[2] == "-L") {
		if !f.present[strings.Join(args[3:], " ")] {
			return "no such rule", errors.New("exit status 1")
		}
		if args[2] == "-D" {
			delete(f.present, strings.Join(args[3:], " "))
		}
	}
	return "", nil
}

func TestApplyAddsJumpsOnce(t *testing.T) {
	r := Rules{ProxyUID: 1337, IngressPort: 15006, EgressPort: 15001, AppPorts: []int{8080}}
	out := strings.Join(egressJump.rule, " ")
	f := &fakeIptables{present: map[string]bool{out: true}}
	if err := r.Apply(context.Background(), f.run); err != nil {
		t.Fatal(err)
	}
	var adds []string
	for _, c := range f.cmds {
		if strings.HasPrefix(c, "iptables -t nat -A ") {
			adds = append(adds, c)
		}
	}
	if len(adds) != 1 || !strings.Contains(adds[0], "PREROUTING") {
		t.Errorf("added %q, want only the missing PREROUTING jump", adds)
	}
	if f.cmds[0] != "iptables-restore --noflush" {
		t.Errorf("first command %q, want iptables-restore --noflush (leaves other rules alone)", f.cmds[0])
	}
}

// The DNS jumps go first in OUTPUT: appended after the egress jump, TCP
// queries to other hosts would be taken to the egress port.
func TestApplyInsertsDNSJumpsFirst(t *testing.T) {
	r := Rules{ProxyUID: 1337, IngressPort: 15006, EgressPort: 15001, DNSPort: 15053}
	f := &fakeIptables{present: map[string]bool{}}
	if err := r.Apply(context.Background(), f.run); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range f.cmds {
		if strings.Contains(c, "TRELLIS_DNS") && !strings.Contains(c, " -C ") {
			got = append(got, c)
		}
	}
	want := []string{
		"iptables -t nat -I OUTPUT 1 -p udp --dport 53 -j TRELLIS_DNS",
		"iptables -t nat -I OUTPUT 1 -p tcp --dport 53 -j TRELLIS_DNS",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("DNS jumps added as\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestRemoveTakesDNSRules(t *testing.T) {
	f := &fakeIptables{present: map[string]bool{
		strings.Join(dnsJumps[0].rule, " "): true,
		strings.Join(dnsJumps[1].rule, " "): true,
		DNSChain + " -n":                    true,
	}}
	if err := Remove(context.Background(), f.run); err != nil {
		t.Fatal(err)
	}
	for _, j := range dnsJumps {
		if f.present[strings.Join(j.rule, " ")] {
			t.Errorf("jump %q left", j.rule)
		}
	}
	all := strings.Join(f.cmds, "\n")
	for _, want := range []string{"iptables -t nat -F TRELLIS_DNS", "iptables -t nat -X TRELLIS_DNS"} {
		if !strings.Contains(all, want) {
			t.Errorf("remove did not run %q; ran:\n%s", want, all)
		}
	}
}

func TestApplyRefusesInvalid(t *testing.T) {
	f := &fakeIptables{}
	if err := (Rules{}).Apply(context.Background(), f.run); err == nil || len(f.cmds) != 0 {
		t.Errorf("invalid rules: err %v, ran %q; want an error and nothing run", err, f.cmds)
	}
}
