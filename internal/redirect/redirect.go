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
//     addresses (localhost, the explicit upstream listeners) is left alone.
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
)

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
	port("ingress port", r.IngressPort)
	port("egress port", r.EgressPort)
	if r.IngressPort == r.EgressPort {
		errs = append(errs, fmt.Errorf("ingress and egress ports are both %d", r.IngressPort))
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
	fmt.Fprintf(&b, ":%s - [0:0]\n:%s - [0:0]\n", IngressChain, EgressChain)
	for _, ports := range chunks(r.AppPorts) {
		fmt.Fprintf(&b, "-A %s -p tcp -m multiport --dports %s -j REDIRECT --to-ports %d\n", IngressChain, ports, r.IngressPort)
	}
	fmt.Fprintf(&b, "-A %s -m owner --uid-owner %d -j RETURN\n", EgressChain, r.ProxyUID)
	for _, a := range r.excluded() {
		fmt.Fprintf(&b, "-A %s -d %s -j RETURN\n", EgressChain, a)
	}
	for _, ports := range chunks(r.ExcludePorts) {
		fmt.Fprintf(&b, "-A %s -p tcp -m multiport --dports %s -j RETURN\n", EgressChain, ports)
	}
	fmt.Fprintf(&b, "-A %s -p tcp -j REDIRECT --to-ports %d\n", EgressChain, r.EgressPort)
	b.WriteString("COMMIT\n")
	return b.String()
}

// jumps are the rules of the built-in chains that enter ours: inbound from
// other hosts, outbound to other hosts.
var jumps = [][]string{
	{"PREROUTING", "-p", "tcp", "-m", "addrtype", "!", "--src-type", "LOCAL", "-j", IngressChain},
	{"OUTPUT", "-p", "tcp", "-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", EgressChain},
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
	for _, j := range jumps {
		if _, err := run(ctx, "", "iptables", append([]string{"-t", "nat", "-C"}, j...)...); err == nil {
			continue
		}
		if out, err := run(ctx, "", "iptables", append([]string{"-t", "nat", "-A"}, j...)...); err != nil {
			return fmt.Errorf("iptables -A %s: %v: %s", j[0], err, out)
		}
	}
	return nil
}

// Remove takes the rules out again; what is already gone is no error.
func Remove(ctx context.Context, run Runner) error {
	var errs []error
	for _, j := range jumps {
		for {
			if _, err := run(ctx, "", "iptables", append([]string{"-t", "nat", "-D"}, j...)...); err != nil {
				break // no (more) such rule
			}
		}
	}
	for _, c := range []string{IngressChain, EgressChain} {
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
