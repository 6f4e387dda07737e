package topology

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/identity"
)

// SNISuffix ends every name a network gateway routes by. ".internal" is
// reserved for private use, so the names can never be a public domain's.
const SNISuffix = "trellis.internal"

// NetworkSNI is the server name a caller's sidecar sends to a network
// gateway for an instance of service, and the key the gateway routes by:
// "<instance>.<service>.trellis.internal". The instance ID is used as it
// is when it is a DNS label (a-z, 0-9, '-', at most 63, no hyphen at
// either end); other IDs (with dots or underscores, or longer) become "h"
// and the first 20 hex digits of their SHA-256. The name is lowercase, a
// valid DNS name, and the same on every server and proxy.
func NetworkSNI(instance, service string) string {
	return instanceLabel(instance) + "." + service + "." + SNISuffix
}

func instanceLabel(id string) string {
	ok := id != "" && len(id) <= 63 && id[0] != '-' && id[len(id)-1] != '-'
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
	}
	if ok {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "h" + hex.EncodeToString(sum[:10])
}

// gatewaySet is what callers know of one network's gateways.
type gatewaySet struct {
	declared []string // names of the Gateway resources with a listener for the network
	healthy  []string // "ip:port" of their healthy instances in the network, sorted
}

// networkGateways returns, by network, the gateways declared for it and
// their healthy instances. An instance counts only in the network its
// listener names: a gateway process in another network refuses to serve
// that listener.
func networkGateways(m *Mesh) map[string]*gatewaySet {
	var nets map[string]*gatewaySet
	names := make([]string, 0, len(m.Gateways))
	for name := range m.Gateways {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		for _, l := range m.Gateways[name].Listeners {
			if l.Protocol != v1.GatewayNetwork {
				continue
			}
			if nets == nil {
				nets = map[string]*gatewaySet{}
			}
			g := nets[l.Network]
			if g == nil {
				g = &gatewaySet{}
				nets[l.Network] = g
			}
			g.declared = append(g.declared, name)
			for _, in := range m.Instances[name] {
				if in.Healthy && v1.EffectiveNetwork(in.Network) == l.Network {
					g.healthy = append(g.healthy, net.JoinHostPort(in.Address, strconv.Itoa(l.Port)))
				}
			}
		}
	}
	for _, g := range nets {
		sort.Strings(g.healthy)
		g.healthy = compactStrings(g.healthy)
	}
	return nets
}

func compactStrings(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// endpoints returns the healthy instances a proxy in network local may
// use, each with its path, and why some are missing:
//   - an instance in local, or in a network that declares no network
//     gateway (joined by routing), is dialed directly;
//   - one in a network with gateways goes through its healthy gateways;
//     when there are none it is left out (no black hole), and the reason
//     returned.
//
// With locality prefer-local, instances outside local are kept only when
// none in local is healthy (and then only are missing ones explained).
func endpoints(ins []v1.Instance, nets map[string]*gatewaySet, local, locality string) ([]Endpoint, string) {
	eps := []Endpoint{}
	var cut []string // networks whose endpoints were left out
	haveLocal := false
	for _, in := range ins {
		if !in.Healthy {
			continue
		}
		n := v1.EffectiveNetwork(in.Network)
		e := Endpoint{
			Instance: in.ID, Address: in.Address, Port: in.Port, EdgePort: in.EdgePort, Version: in.Version, Network: in.Network,
		}
		if n == local {
			haveLocal = true
		} else if g := nets[n]; g != nil {
			if len(g.healthy) == 0 {
				cut = append(cut, n)
				continue
			}
			e.Gateways = g.healthy
			e.SNI = NetworkSNI(in.ID, in.Service)
		}
		eps = append(eps, e)
	}
	if haveLocal && locality != v1.LocalityAny {
		kept := eps[:0]
		for _, e := range eps {
			if v1.EffectiveNetwork(e.Network) == local {
				kept = append(kept, e)
			}
		}
		eps = kept
		// What was cut would not have been used: nothing to explain,
		// and a remote gateway's flapping changes no local snapshot.
		cut = nil
	}
	if len(cut) == 0 {
		return eps, ""
	}
	sort.Strings(cut)
	cut = compactStrings(cut)
	var why []string
	for _, n := range cut {
		why = append(why, fmt.Sprintf("network %s: no healthy network gateway (declared: %s)", n, strings.Join(nets[n].declared, ", ")))
	}
	return eps, strings.Join(why, "; ")
}

// networkTargets returns, for the gateway name with a network listener
// for network local, the SNI -> address of every healthy instance in
// local that is not itself a gateway and that a sidecar could serve at;
// nil for any other gateway.
//
// An instance's address is what its own sidecar registered, and the
// gateway forwards raw TCP from other networks there: a token holder who
// registered the cloud metadata endpoint, a gateway's own listener (a
// loop: each connection opens another) or its host's loopback would have
// the gateway carry strangers there. Those are left out
// (forwardable); loopback only counts while the gateway itself is on
// loopback, as with trellis up.
func networkTargets(m *Mesh, name string, local string) map[string]string {
	gw := m.Gateways[name]
	serves := false
	for _, l := range gw.Listeners {
		serves = serves || l.Protocol == v1.GatewayNetwork && l.Network == local
	}
	if !serves {
		return nil
	}
	// Every gateway listener in the network: a target there is a loop.
	loops := map[netip.AddrPort]bool{}
	for g, spec := range m.Gateways {
		for _, in := range m.Instances[g] {
			a, err := netip.ParseAddr(in.Address)
			if err != nil || v1.EffectiveNetwork(in.Network) != local {
				continue
			}
			for _, l := range spec.Listeners {
				loops[netip.AddrPortFrom(a.Unmap(), uint16(l.Port))] = true
			}
		}
	}
	loopback := len(m.Instances[name]) > 0
	for _, in := range m.Instances[name] {
		if a, err := netip.ParseAddr(in.Address); err != nil || !a.IsLoopback() {
			loopback = false
		}
	}
	out := map[string]string{}
	for svc, ins := range m.Instances {
		if m.Gateways[svc] != nil {
			continue
		}
		for _, in := range ins {
			if !in.Healthy || v1.EffectiveNetwork(in.Network) != local {
				continue
			}
			a, err := netip.ParseAddr(in.Address)
			if err != nil || in.Port <= 0 || in.Port > 65535 {
				continue
			}
			ap := netip.AddrPortFrom(a.Unmap(), uint16(in.Port))
			if forwardable(ap.Addr()) != nil || loops[ap] || a.IsLoopback() && !loopback {
				continue
			}
			out[NetworkSNI(in.ID, svc)] = ap.String()
		}
	}
	return out
}

// forwardable says why a network gateway must never forward to a, if it
// must not: no sidecar serves peers from an unspecified, multicast or
// link-local address (169.254.169.254 is the cloud's metadata endpoint).
func forwardable(a netip.Addr) error {
	switch {
	case a.IsUnspecified():
		return fmt.Errorf("%s is unspecified", a)
	case a.IsMulticast():
		return fmt.Errorf("%s is multicast", a)
	case a.IsLinkLocalUnicast():
		return fmt.Errorf("%s is link-local", a)
	}
	return nil
}

// Paths says how the proxy given s reaches each of its upstreams, for
// `trellis get proxies`.
func Paths(s *Snapshot) []v1.UpstreamPath {
	out := make([]v1.UpstreamPath, 0, len(s.Upstreams))
	for _, u := range s.Upstreams {
		var kinds []string
		seen := map[string]bool{}
		for _, e := range u.Endpoints {
			k := "direct"
			if len(e.Gateways) > 0 {
				k = "via gateway network " + v1.EffectiveNetwork(e.Network)
			}
			if !seen[k] {
				seen[k] = true
				kinds = append(kinds, k)
			}
		}
		sort.Strings(kinds)
		path := strings.Join(kinds, ", ")
		if path == "" {
			path = "none"
		}
		out = append(out, v1.UpstreamPath{Service: u.Service, Path: path, Unreachable: u.Unreachable})
	}
	return out
}

// ParseNetworkSNI splits a name made by NetworkSNI into its instance
// label and service; ok is false for any other name. Server names come
// from any client of a network gateway: untrusted input.
func ParseNetworkSNI(sni string) (instance, service string, ok bool) {
	rest, found := strings.CutSuffix(sni, "."+SNISuffix)
	if !found {
		return "", "", false
	}
	instance, service, found = strings.Cut(rest, ".")
	if !found || instance == "" || strings.Contains(service, ".") || identity.ValidateServiceName(service) != nil {
		return "", "", false
	}
	return instance, service, true
}
