package cli

import (
	"context"
	"fmt"
	"os/user"
	"strconv"
	"strings"

	"github.com/trellis-mesh/trellis/internal/redirect"
)

// runRedirect installs (or prints, or removes) the iptables rules of
// transparent mode in this network namespace: what ECS does for a task
// definition's proxyConfiguration, for VMs, pods (an init container with
// NET_ADMIN) and compose services.
func runRedirect(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "redirect", "redirect --proxy-uid UID --app-port P[,P...] [--dns-port PORT] [flags] | redirect --dns-only --dns-port PORT | redirect --remove")
	uid := fs.Int("proxy-uid", 1337, "UID the proxy runs as: its own traffic is never redirected (not 0)")
	appPorts := fs.String("app-port", "", "comma-separated app ports whose inbound traffic goes to --ingress-port (default none)")
	ingress := fs.Int("ingress-port", 15006, "the proxy's transparent ingress port (trellis proxy --ingress-port)")
	egress := fs.Int("egress-port", 15001, "the proxy's transparent egress port (trellis proxy --egress-port)")
	excludeAddrs := fs.String("exclude-addr", "", "comma-separated IPv4 addresses or prefixes never redirected (the ECS and EC2 metadata addresses always are not)")
	excludePorts := fs.String("exclude-port", "", "comma-separated destination ports never redirected")
	dnsPort := fs.Int("dns-port", 0, "send the app's UDP and TCP port-53 traffic to the proxy's DNS listener on 127.0.0.1:PORT (trellis proxy --dns-listen; default off)")
	dnsOnly := fs.Bool("dns-only", false, "install the DNS rule alone (with --dns-port), where something else redirects TCP, such as the ECS agent")
	excludeUIDs := fs.String("exclude-uid", "", "comma-separated further UIDs or user names whose traffic is never redirected; with --dns-port the users of local caching resolvers ("+strings.Join(redirect.LocalResolverUsers, ", ")+") found on this host are added")
	printOnly := fs.Bool("print", false, "print every rule the install adds (iptables-restore input, then the jumps from PREROUTING and OUTPUT) and change nothing")
	remove := fs.Bool("remove", false, "remove the rules")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if *remove {
		return redirect.Remove(ctx, redirect.Exec)
	}
	r := redirect.Rules{ProxyUID: *uid, IngressPort: *ingress, EgressPort: *egress, ExcludeAddrs: splitList(*excludeAddrs), DNSPort: *dnsPort, DNSOnly: *dnsOnly}
	var err error
	if r.AppPorts, err = ports("--app-port", *appPorts); err != nil {
		return err
	}
	if r.ExcludePorts, err = ports("--exclude-port", *excludePorts); err != nil {
		return err
	}
	for _, u := range splitList(*excludeUIDs) {
		id, err := lookupUID(u)
		if err != nil {
			return usageErr("--exclude-uid: %v", err)
		}
		r.ExcludeUIDs = append(r.ExcludeUIDs, id)
	}
	if r.DNSPort != 0 {
		// A local caching resolver's queries to the network are what the
		// proxy's forwarded ones become: sent back to the proxy, they
		// would loop.
		for _, name := range redirect.LocalResolverUsers {
			if id, err := lookupUID(name); err == nil {
				r.ExcludeUIDs = append(r.ExcludeUIDs, id)
			}
		}
	}
	if err := r.Validate(); err != nil {
		return usageErr("%s", oneLine(err))
	}
	if *printOnly {
		fmt.Fprint(e.stdout, r.Print())
		return nil
	}
	return r.Apply(ctx, redirect.Exec)
}

// lookupUID reads a UID, or looks a user name up on this host.
func lookupUID(s string) (int, error) {
	if id, err := strconv.Atoi(s); err == nil {
		return id, nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a UID or a user of this host", s)
	}
	return strconv.Atoi(u.Uid)
}

// ports reads a comma-separated list of ports.
func ports(flag, s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, usageErr("%s: %q is not a port", flag, f)
		}
		out = append(out, p)
	}
	return out, nil
}
