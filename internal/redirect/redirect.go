// Package redirect is transparent proxying: the iptables rules that send a
// workload's TCP traffic through its proxy without the app knowing, and the
// original destination of a connection those rules redirected.
//
// The rules are the ones ECS installs for a task definition's APPMESH
// proxyConfiguration, so a task on ECS and a VM, pod or compose service
// running `trellis redirect` behave the same:
//
//   - inbound: TCP from other hosts to the app's ports goes to the proxy's
//     ingress port, so nothing reaches the app around the mesh's mTLS;
//   - outbound: TCP to other hosts goes to the proxy's egress port, except
//     the proxy's own (by its UID), excluded addresses (the ECS metadata
//     endpoints at least) and excluded ports. Traffic to this host's own
//     addresses (localhost, the explicit upstream listeners) is left alone;
//   - DNS (with a DNS port): UDP and TCP to port 53 of any address, this
//     host's own included (127.0.0.53 of systemd-resolved), goes to the
//     proxy's resolver on 127.0.0.1, except the proxy's own queries, which
//     must reach the real resolver. The rules are IPv4, as the others are.
package redirect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
)

// Chain names: ours alone, so that applying and removing touch nothing else.
const (
	IngressChain = "TRELLIS_INGRESS"
	EgressChain  = "TRELLIS_EGRESS"
	DNSChain     = "TRELLIS_DNS"
)

// LocalResolverUsers are the users local caching resolvers run as
// (systemd-resolved, dnsmasq, unbound, BIND). Where one exists on the host,
// `trellis redirect --dns-port` leaves its traffic alone too: its queries
// to the network are what the proxy's own forwarded queries become, and
// redirecting them back to the proxy would loop.
var LocalResolverUsers = []string{"systemd-resolve", "dnsmasq", "unbound", "bind"}

// MetadataAddrs are the ECS task metadata and EC2 instance metadata
// endpoints: their callers authenticate by source address, so they are
// never redirected.
var MetadataAddrs = []string{"169.254.170.2", "169.254.169.254"}

// Rules says what to redirect where.
type Rules struct {
	// ProxyUID is the UID the proxy runs as; its own connections (to the
	// control plane, to peers) are never redirected.
	ProxyUID int
	// IngressPort and EgressPort are the proxy's transparent listeners.
	IngressPort, EgressPort int
	// AppPorts are the app's ports whose inbound traffic is redirected;
	// none leaves inbound traffic alone.
	AppPorts []int
	// ExcludeAddrs are destinations (IPs or CIDR prefixes) left alone;
	// MetadataAddrs are always added.
	ExcludeAddrs []string
	// ExcludePorts are destination ports left alone.
	ExcludePorts []int

	// DNSPort, when not 0, is the proxy's DNS listener on 127.0.0.1 (trellis
	// proxy --dns-listen 127.0.0.1:PORT): the app's UDP and TCP queries to
	// port 53 go there.
	DNSPort int
	// DNSOnly installs the DNS rule alone, where something else redirects
	// TCP (the ECS agent, for a task definition's proxyConfiguration); the
	// ingress, egress and app ports are then unused.
	DNSOnly bool
	// ExcludeUIDs are further UIDs whose traffic is never redirected, as
	// the proxy's is: a local caching resolver's (LocalResolverUsers).
	ExcludeUIDs []int
}

// Validate reports every problem at once.
func (r Rules) Validate() error {
	var errs []error
	port := func(what string, p int) {
		if p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("%s: %d is not a port in 1-65535", what, p))
		}
	}
	if r.ProxyUID < 0 {
		errs = append(errs, fmt.Errorf("proxy UID: %d is negative", r.ProxyUID))
	}
	if r.ProxyUID == 0 {
		// Root's traffic is everything a shell in the task sends; exempting
		// it would exempt the app too whenever the app runs as root.
		errs = append(errs, errors.New("proxy UID: 0 (root) cannot be told apart from the app; run the proxy as its own UID"))
	}
	if r.DNSOnly {
		if r.DNSPort == 0 {
			errs = append(errs, errors.New("DNS only, but no DNS port"))
		}
		r.IngressPort, r.EgressPort, r.AppPorts = 0, 0, nil // unused
	} else {
		port("ingress port", r.IngressPort)
		port("egress port", r.EgressPort)
		if r.IngressPort == r.EgressPort {
			errs = append(errs, fmt.Errorf("ingress and egress ports are both %d", r.IngressPort))
		}
	}
	for _, p := range r.AppPorts {
		port("app port", p)
		if p == r.IngressPort || p == r.EgressPort {
			errs = append(errs, fmt.Errorf("app port %d is one of the proxy's transparent ports", p))
		}
	}
	for _, p := range r.ExcludePorts {
		port("excluded port", p)
	}
	if r.DNSPort != 0 {
		port("DNS port", r.DNSPort)
		if r.DNSPort == r.IngressPort || r.DNSPort == r.EgressPort {
			errs = append(errs, fmt.Errorf("DNS port %d is one of the proxy's transparent ports", r.DNSPort))
		}
		if r.DNSPort == 53 {
			// 127.0.0.1:53 redirected to itself is harmless, but a proxy
			// listening there gets the queries without any rule.
			errs = append(errs, errors.New("DNS port: 53 needs no redirect; give the proxy's own port, such as 15053"))
		}
	}
	for _, u := range r.ExcludeUIDs {
		if u < 0 {
			errs = append(errs, fmt.Errorf("excluded UID: %d is negative", u))
		}
		if u == 0 {
			errs = append(errs, errors.New("excluded UID: 0 (root) cannot be told apart from the app"))
		}
	}
	for _, a := range r.ExcludeAddrs {
		if _, err := parsePrefix(a); err != nil {
			errs = append(errs, fmt.Errorf("excluded address %q: not an IPv4 address or prefix", a))
		}
	}
	return errors.Join(errs...)
}

// parsePrefix reads an IPv4 address or prefix; the rules are IPv4 (as
// ECS's are).
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Prefix{}, errors.New("not IPv4")
	}
	return netip.PrefixFrom(a, 32), nil
}

// excluded is ExcludeAddrs with the metadata addresses, normalized,
// without duplicates.
func (r Rules) excluded() []string {
	var out []string
	for _, a := range append(slices.Clone(MetadataAddrs), r.ExcludeAddrs...) {
		p, err := parsePrefix(a)
		if err == nil && !slices.Contains(out, p.String()) {
			out = append(out, p.String())
		}
	}
	return out
}

// Script is the iptables-restore input that (re)defines the chains. With
// --noflush it leaves every other rule of the nat table alone; declaring a
// chain that exists empties it, so applying twice is applying once.
func (r Rules) Script() string {
	var b strings.Builder
	b.WriteString("*nat\n")
	uids := r.uids()
	if r.DNSOnly {
		fmt.Fprintf(&b, ":%s - [0:0]\n", DNSChain)
		r.dnsRules(&b, uids)
		b.WriteString("COMMIT\n")
		return b.String()
	}
	// The DNS chain is declared (so emptied) even without a DNS port:
	// jumps left by an earlier install with one then lead nowhere.
	fmt.Fprintf(&b, ":%s - [0:0]\n:%s - [0:0]\n:%s - [0:0]\n", IngressChain, EgressChain, DNSChain)
	for _, ports := range chunks(r.AppPorts) {
		fmt.Fprintf(&b, "-A %s -p tcp -m multiport --dports %s -j REDIRECT --to-ports %d\n", IngressChain, ports, r.IngressPort)
	}
	for _, u := range uids {
		fmt.Fprintf(&b, "-A %s -m owner --uid-owner %d -j RETURN\n", EgressChain, u)
	}
	for _, a := range r.excluded() {
		fmt.Fprintf(&b, "-A %s -d %s -j RETURN\n", EgressChain, a)
	}
	for _, ports := range chunks(r.ExcludePorts) {
		fmt.Fprintf(&b, "-A %s -p tcp -m multiport --dports %s -j RETURN\n", EgressChain, ports)
	}
	fmt.Fprintf(&b, "-A %s -p tcp -j REDIRECT --to-ports %d\n", EgressChain, r.EgressPort)
	r.dnsRules(&b, uids)
	b.WriteString("COMMIT\n")
	return b.String()
}

// dnsRules are the DNS chain's rules, none without a DNS port.
func (r Rules) dnsRules(b *strings.Builder, uids []int) {
	if r.DNSPort == 0 {
		return
	}
	for _, u := range uids {
		fmt.Fprintf(b, "-A %s -m owner --uid-owner %d -j RETURN\n", DNSChain, u)
	}
	for _, proto := range []string{"udp", "tcp"} {
		fmt.Fprintf(b, "-A %s -p %s --dport 53 -j REDIRECT --to-ports %d\n", DNSChain, proto, r.DNSPort)
	}
}

// uids are the proxy's UID and the excluded ones, without duplicates.
func (r Rules) uids() []int {
	out := []int{r.ProxyUID}
	for _, u := range r.ExcludeUIDs {
		if !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// Print is Script followed by the jumps Apply adds to the built-in chains
// (as commands, in comments, so that the whole stays iptables-restore
// input): every rule the install makes.
func (r Rules) Print() string {
	var b strings.Builder
	b.WriteString(r.Script())
	b.WriteString("# then each of these unless iptables -t nat -C finds it already:\n")
	for _, j := range r.jumps() {
		fmt.Fprintf(&b, "# iptables %s\n", strings.Join(j.args(), " "))
	}
	return b.String()
}

// jump is a rule of a built-in chain that enters one of ours.
type jump struct {
	rule []string
	// first: inserted at the top of its chain rather than appended, to
	// come before the egress jump (which would take TCP port 53).
	first bool
}

// args are iptables's arguments that add j.
func (j jump) args() []string {
	if j.first {
		return slices.Concat([]string{"-t", "nat", "-I", j.rule[0], "1"}, j.rule[1:])
	}
	return append([]string{"-t", "nat", "-A"}, j.rule...)
}

// The jumps: inbound from other hosts, outbound to other hosts, and DNS
// to any address.
var (
	ingressJump = jump{rule: []string{"PREROUTING", "-p", "tcp", "-m", "addrtype", "!", "--src-type", "LOCAL", "-j", IngressChain}}
	egressJump  = jump{rule: []string{"OUTPUT", "-p", "tcp", "-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", EgressChain}}
	dnsJumps    = []jump{
		{rule: []string{"OUTPUT", "-p", "udp", "--dport", "53", "-j", DNSChain}, first: true},
		{rule: []string{"OUTPUT", "-p", "tcp", "--dport", "53", "-j", DNSChain}, first: true},
	}
	// allJumps are what Remove takes out, whatever was installed.
	allJumps = append([]jump{ingressJump, egressJump}, dnsJumps...)
)

// jumps are the jumps r installs.
func (r Rules) jumps() []jump {
	if r.DNSOnly {
		return dnsJumps
	}
	js := []jump{ingressJump, egressJump}
	if r.DNSPort != 0 {
		js = append(js, dnsJumps...)
	}
	return js
}

// chunks joins ports by commas, 15 at a time (the multiport limit).
func chunks(ports []int) []string {
	var out []string
	for c := range slices.Chunk(ports, 15) {
		s := make([]string, len(c))
		for i, p := range c {
			s[i] = strconv.Itoa(p)
		}
		out = append(out, strings.Join(s, ","))
	}
	return out
}

// Runner runs a command with stdin and returns its combined output.
type Runner func(ctx context.Context, stdin string, name string, args ...string) (string, error)

// Exec runs commands for real.
func Exec(ctx context.Context, stdin, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// Apply installs r in the current network namespace: the chains, then the
// jumps into them unless they are there already.
func (r Rules) Apply(ctx context.Context, run Runner) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if out, err := run(ctx, r.Script(), "iptables-restore", "--noflush"); err != nil {
		return fmt.Errorf("iptables-restore: %v: %s", err, out)
	}
	for _, j := range r.jumps() {
		if _, err := run(ctx, "", "iptables", append([]string{"-t", "nat", "-C"}, j.rule...)...); err == nil {
			continue
		}
		if out, err := run(ctx, "", "iptables", j.args()...); err != nil {
			return fmt.Errorf("iptables %s: %v: %s", strings.Join(j.args(), " "), err, out)
		}
	}
	return nil
}

// Remove takes the rules out again; what is already gone is no error.
func Remove(ctx context.Context, run Runner) error {
	var errs []error
	for _, j := range allJumps {
		for {
			if _, err := run(ctx, "", "iptables", append([]string{"-t", "nat", "-D"}, j.rule...)...); err != nil {
				break // no (more) such rule
			}
		}
	}
	for _, c := range []string{IngressChain, EgressChain, DNSChain} {
		if _, err := run(ctx, "", "iptables", "-t", "nat", "-L", c, "-n"); err != nil {
			continue // no such chain
		}
		for _, op := range []string{"-F", "-X"} {
			if out, err := run(ctx, "", "iptables", "-t", "nat", op, c); err != nil {
				errs = append(errs, fmt.Errorf("iptables %s %s: %v: %s", op, c, err, out))
			}
		}
	}
	return errors.Join(errs...)
}
