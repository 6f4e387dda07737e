package meshdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/trellis-mesh/trellis/internal/topology"
)

// Modes of a Resolver: what address a mesh name answers.
const (
	// ModeVIP answers each upstream's virtual IP (VIPs), for apps whose
	// traffic the redirect rules send to the transparent egress.
	ModeVIP = "vip"
	// ModeLocal answers the upstream's local listener address, where that
	// is a loopback address and the Service's port: an unmodified app
	// needs no redirect rules. Upstreams that share a port (every backend
	// on 3000, as App Mesh apps often have them) each take a loopback
	// address of their own, such as 127.0.0.2 and 127.0.0.3.
	ModeLocal = "local"
)

// Defaults of ResolverConfig.
const (
	DefaultResolvConf     = "/etc/resolv.conf"
	DefaultMaxForwards    = 128
	DefaultForwardTimeout = 2 * time.Second
	// DefaultResolverRate is the resolver's per-client rate: its clients
	// are the app's processes, all at one loopback address, and many
	// runtimes cache nothing.
	DefaultResolverRate = 2000
)

// ResolverConfig configures a Resolver. Zero values mean the defaults.
type ResolverConfig struct {
	// Mode is ModeVIP (default) or ModeLocal.
	Mode string
	// Upstream is the host's resolver (host:port, or an IP for port 53)
	// that names outside the mesh go to; default the first nameserver of
	// ResolvConf.
	Upstream string
	// ResolvConf is read for Upstream when that is empty; default
	// /etc/resolv.conf.
	ResolvConf string
	// VIPs is the table of virtual IPs ModeVIP answers, shared with the
	// transparent egress that maps them back; nil makes one of the
	// resolver's own.
	VIPs *VIPTable
	// Listeners are the upstreams' local listeners, by service (ModeLocal
	// answers one only where it is on a loopback address at the Service's
	// port).
	Listeners map[string]netip.AddrPort
	// MaxForwards bounds the forwards in flight; a query over it gets
	// SERVFAIL. Default 128.
	MaxForwards int
	// ForwardTimeout bounds one forward; default 2s.
	ForwardTimeout time.Duration
	// Rate and Burst limit each client, as in AuthorityConfig; default
	// DefaultResolverRate.
	Rate  float64
	Burst int
	// Logger; nil discards.
	Logger *slog.Logger
	// Metrics; nil counts nothing.
	Metrics *Metrics
}

// Resolver is a sidecar's DNS server for its own app. The names of the
// app's upstreams answer A with their virtual IP (or their loopback
// listener's address in local mode) and SRV with their port; AAAA is NODATA. Other names under the
// mesh's domains are NXDOMAIN: an app learns nothing of services it may
// not call. Every other name goes to the host's resolver.
type Resolver struct {
	guard
	mode      string
	listeners map[string]netip.AddrPort
	upstream  string // "" forwards nothing (REFUSED)
	timeout   time.Duration
	forwards  chan struct{} // a slot per forward in flight
	vips      *VIPTable

	zone atomic.Pointer[zone]

	mu         sync.Mutex
	unanswered string // guarded by mu: the names last logged as unanswerable
}

// NewResolver checks cfg and returns a resolver that forwards every name
// until the first Update.
func NewResolver(cfg ResolverConfig) (*Resolver, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Resolver{mode: cfg.Mode, listeners: cfg.Listeners, timeout: cfg.ForwardTimeout, vips: cfg.VIPs}
	if r.vips == nil {
		r.vips = &VIPTable{}
	}
	switch r.mode {
	case "":
		r.mode = ModeVIP
	case ModeVIP, ModeLocal:
	default:
		return nil, fmt.Errorf("dns mode %q: want %s or %s", cfg.Mode, ModeVIP, ModeLocal)
	}
	if r.timeout <= 0 {
		r.timeout = DefaultForwardTimeout
	}
	n := cfg.MaxForwards
	if n <= 0 {
		n = DefaultMaxForwards
	}
	r.forwards = make(chan struct{}, n)
	up, err := hostResolver(cfg.Upstream, cfg.ResolvConf)
	if err != nil {
		return nil, err
	}
	r.upstream = up
	qps := cfg.Rate
	if qps == 0 {
		qps = DefaultResolverRate
	}
	r.guard = guard{answer: r.answer, limits: newClientLimits(qps, cfg.Burst), metrics: cfg.Metrics, log: log}
	return r, nil
}

// Upstream is the host resolver names outside the mesh go to.
func (r *Resolver) Upstream() string { return r.upstream }

// hostResolver is upstream as host:port, or the first nameserver of the
// resolv.conf file.
func hostResolver(upstream, resolvConf string) (string, error) {
	if upstream != "" {
		if ip, err := netip.ParseAddr(upstream); err == nil {
			return netip.AddrPortFrom(ip, 53).String(), nil
		}
		ap, err := netip.ParseAddrPort(upstream)
		if err != nil || ap.Port() == 0 {
			return "", fmt.Errorf("dns upstream %q: want IP or IP:port", upstream)
		}
		return ap.String(), nil
	}
	if resolvConf == "" {
		resolvConf = DefaultResolvConf
	}
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return "", fmt.Errorf("dns upstream: read %s: %w (or give the host resolver)", resolvConf, err)
	}
	if len(cc.Servers) == 0 {
		return "", fmt.Errorf("dns upstream: %s names no nameserver (give the host resolver)", resolvConf)
	}
	return net.JoinHostPort(cc.Servers[0], cc.Port), nil
}

// Update replaces the names answered with those of s, and logs the names
// that local mode cannot answer when they change.
func (r *Resolver) Update(s *topology.Snapshot) {
	z := newZone(s.DNSDomains, s.DNSHostnames, uint32(time.Now().Unix()))
	names := make([]string, len(s.Upstreams))
	for i, u := range s.Upstreams {
		names[i] = u.Service
	}
	vips := r.vips.Assign(names)
	var unanswered []string
	for _, u := range s.Upstreams {
		addr, port, why := r.target(u, vips)
		for _, h := range u.Hostnames {
			n := z.add(h)
			if n == nil {
				continue
			}
			if why != "" {
				unanswered = append(unanswered, h+" ("+why+")")
				continue
			}
			n.addAddr(addr)
			if port > 0 {
				n.addSRV(srvTarget{port: port})
			}
		}
	}
	r.zone.Store(z)
	msg := strings.Join(unanswered, ", ")
	r.mu.Lock()
	changed := msg != r.unanswered
	r.unanswered = msg
	r.mu.Unlock()
	if changed && msg != "" {
		r.log.Warn("dns: these mesh names answer no address in local mode, as no local listener is on a loopback address at the Service's port (give the upstream one, or use mode vip with redirect rules)", "names", msg)
	}
}

// target is the address and SRV port u's names answer, or why there is
// none.
func (r *Resolver) target(u topology.Upstream, vips map[string]netip.Addr) (netip.Addr, uint16, string) {
	if r.mode == ModeVIP {
		return vips[u.Service], uint16(u.Port), ""
	}
	l, ok := r.listeners[u.Service]
	switch {
	case u.Port <= 0:
		return netip.Addr{}, 0, "its Service declares no port"
	case !ok:
		return netip.Addr{}, 0, "no local listener"
	case !l.Addr().Is4() || !l.Addr().IsLoopback():
		return netip.Addr{}, 0, "listener on " + l.String() + ", not a 127.x address"
	case int(l.Port()) != u.Port:
		return netip.Addr{}, 0, "listener port " + strconv.Itoa(int(l.Port())) + ", Service port " + strconv.Itoa(u.Port)
	}
	return l.Addr(), l.Port(), ""
}

func (r *Resolver) answer(ctx context.Context, req, reply *dns.Msg, tcp bool) string {
	q := req.Question[0]
	if z := r.zone.Load(); z != nil {
		if n, apex, res := z.lookup(q.Name); res != outside {
			return z.fill(reply, q, n, apex, res)
		}
	}
	return r.forward(ctx, req, reply, tcp)
}

// forward asks the host's resolver, over the transport the client used,
// within the bound on forwards in flight and the timeout.
func (r *Resolver) forward(ctx context.Context, req, reply *dns.Msg, tcp bool) string {
	if r.upstream == "" {
		reply.Rcode = dns.RcodeRefused
		return resultRefused
	}
	select {
	case r.forwards <- struct{}{}:
		defer func() { <-r.forwards }()
	default:
		reply.Rcode = dns.RcodeServerFailure
		return resultBusy
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	out := req.Copy()
	out.Id = dns.Id() // the host resolver's answer is matched to our ID, not the app's
	c := &dns.Client{Net: "udp", Timeout: r.timeout}
	if tcp {
		c.Net = "tcp"
	}
	in, _, err := c.ExchangeContext(ctx, out, r.upstream)
	if err == nil && in.Id != out.Id {
		err = errors.New("answer to another query")
	}
	if err != nil {
		r.log.Debug("dns forward failed", "err", err, "upstream", r.upstream)
		reply.Rcode = dns.RcodeServerFailure
		return resultForwardError
	}
	*reply = *in
	reply.Id = req.Id
	reply.Question = slices.Clone(req.Question) // the app's case
	return resultForwarded
}
