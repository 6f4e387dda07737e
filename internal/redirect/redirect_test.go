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
	out := strings.Join(jumps[1], " ")
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

func TestApplyRefusesInvalid(t *testing.T) {
	f := &fakeIptables{}
	if err := (Rules{}).Apply(context.Background(), f.run); err == nil || len(f.cmds) != 0 {
		t.Errorf("invalid rules: err %v, ran %q; want an error and nothing run", err, f.cmds)
	}
}
