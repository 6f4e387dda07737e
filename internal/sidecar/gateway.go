package sidecar

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/proxy/l7"
	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
	"github.com/trellis-mesh/trellis/internal/proxy/passthrough"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/topology"
)

// Gateway makes a proxy the gateway named by Config.Service: it has no
// app, accepts no mesh traffic, and serves the listeners of the Gateway
// resource of that name, opening, changing and closing them as the
// resource changes.
type Gateway struct {
	// ListenIP is the IP the gateway's listeners bind; default 0.0.0.0.
	ListenIP string `yaml:"listenIP"`
}

// gateway runs the listeners of the current Gateway resource.
type gateway struct {
	ctx  context.Context // ends when the proxy stops
	p    *Proxy
	pool *l4.Pool

	mu        sync.Mutex
	open      map[int]*gwListener // by port
	outbounds map[string]*l7.Outbound
	stopped   bool

	// drains are the drains of listeners the resource lost (closeLocked),
	// each bounded by the drain timeout; Drain waits for them, and ends
	// them (endDrains) when its own context ends first.
	drains    sync.WaitGroup
	endDrains context.CancelFunc
	drainsCtx context.Context
}

type gwListener struct {
	spec  v1.GatewayListener
	ln    net.Listener
	drain func(context.Context) error
	stop  context.CancelFunc // ends the listener's certificate renewal
}

func newGateway(ctx context.Context, p *Proxy, pool *l4.Pool) *gateway {
	g := &gateway{ctx: ctx, p: p, pool: pool, open: map[int]*gwListener{}, outbounds: map[string]*l7.Outbound{}}
	g.drainsCtx, g.endDrains = context.WithCancel(ctx)
	return g
}

// listenerSpec returns the current spec of the listener on port, and false
// if the resource no longer has it.
func (g *gateway) listenerSpec(port int) (v1.GatewayListener, bool) {
	a := g.p.cur.Load()
	if a == nil || a.snap.Gateway == nil {
		return v1.GatewayListener{}, false
	}
	for _, l := range a.snap.Gateway.Listeners {
		if l.Port == port {
			return l, true
		}
	}
	return v1.GatewayListener{}, false
}

// reconcile opens the listeners the current resource has and closes (after
// a drain) those it lost. A listener whose protocol or certificate changed
// is replaced; routes and targets are read per request and need nothing.
func (g *gateway) reconcile() {
	a := g.p.cur.Load()
	var want []v1.GatewayListener
	if a != nil && a.snap.Gateway != nil {
		want = a.snap.Gateway.Listeners
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return
	}
	keep := map[int]bool{}
	for _, spec := range want {
		keep[spec.Port] = true
		if cur := g.open[spec.Port]; cur != nil {
			if cur.spec.Protocol == spec.Protocol && reflect.DeepEqual(cur.spec.TLS, spec.TLS) && cur.spec.Network == spec.Network {
				continue
			}
			g.closeLocked(cur)
		}
		l, err := g.start(spec)
		if err != nil {
			g.p.log.Error("gateway listener not started", "port", spec.Port, "protocol", spec.Protocol, "err", err)
			continue
		}
		g.open[spec.Port] = l
		g.p.log.Info("gateway listener started", "addr", l.ln.Addr().String(), "protocol", spec.Protocol)
	}
	for port, l := range g.open {
		if !keep[port] {
			g.closeLocked(l)
		}
	}
	g.p.setGatewayHealth(g.servingLocked(want))
}

// servingLocked reports whether every network listener of the gateway's
// own network in want is open: a gateway that could not bind one (its
// port taken) registers unhealthy, so that callers dial the others.
// Listeners of other networks are refused by design and do not count.
func (g *gateway) servingLocked(want []v1.GatewayListener) bool {
	for _, spec := range want {
		if spec.Protocol == v1.GatewayNetwork && spec.Network == g.p.cfg.Network && g.open[spec.Port] == nil {
			return false
		}
	}
	return true
}

func (g *gateway) closeLocked(l *gwListener) {
	delete(g.open, l.spec.Port)
	l.ln.Close()
	l.stop()
	// Added under g.mu while not stopped: Drain, which sets stopped under
	// g.mu before it waits, sees every one.
	g.drains.Go(func() {
		ctx, cancel := context.WithTimeout(g.drainsCtx, g.p.cfg.DrainTimeout)
		defer cancel()
		if err := l.drain(ctx); err != nil {
			g.p.log.Warn("gateway listener drain incomplete", "port", l.spec.Port, "err", err)
		}
	})
	g.p.log.Info("gateway listener closed", "port", l.spec.Port)
}

func (g *gateway) start(spec v1.GatewayListener) (*gwListener, error) {
	if spec.Protocol == v1.GatewayNetwork && spec.Network != g.p.cfg.Network {
		// Callers do not count it either (topology): its instances are
		// not this gateway's to reach.
		return nil, fmt.Errorf("the listener serves network %q and this gateway is in network %q (--network)", spec.Network, g.p.cfg.Network)
	}
	ip := g.p.cfg.Gateway.ListenIP
	if ip == "" {
		ip = "0.0.0.0"
	}
	lc := netconn.ListenConfig()
	ln, err := lc.Listen(g.ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(spec.Port)))
	if err != nil {
		return nil, err
	}
	port := spec.Port
	name := fmt.Sprintf("gateway:%d", port)
	cancel := func() {}
	switch spec.Protocol {
	case v1.GatewayTLSPassthrough:
		pt := &passthrough.Listener{
			Config:   func() passthrough.Config { return g.passthroughConfig(port) },
			Targets:  g.targets,
			Logger:   g.p.log.With("listener", port),
			Metrics:  g.p.l4m,
			Acceptor: g.p.acceptor(name),
		}
		go func() { g.p.listeners.done(name, pt.Serve(ln)) }()
		return &gwListener{spec: spec, ln: ln, drain: pt.Drain, stop: func() {}}, nil
	case v1.GatewayNetwork:
		nt := &passthrough.Listener{
			Config:    func() passthrough.Config { return g.networkConfig(port) },
			Targets:   g.networkTarget,
			Logger:    g.p.log.With("listener", port, "network", spec.Network),
			Metrics:   g.p.l4m,
			Acceptor:  g.p.acceptor(name),
			Direction: "network",
		}
		go func() { g.p.listeners.done(name, nt.Serve(ln)) }()
		return &gwListener{spec: spec, ln: ln, drain: nt.Drain, stop: func() {}}, nil
	case v1.GatewayHTTPS:
		t := spec.TLS
		ctx, stop := context.WithCancel(g.ctx)
		get, err := g.p.edgeCert(ctx, t.EffectiveSource(), t.CertFile, t.KeyFile, t.DNSNames)
		if err != nil {
			stop()
			ln.Close()
			return nil, err
		}
		cancel = stop
		ln = tls.NewListener(netconn.RawListener(ln), certs.EdgeServerConfig(get, nil, "h2", "http/1.1"))
	}
	in := &l7.Ingress{
		Name: fmt.Sprintf("%s:%d", g.p.cfg.Service, port),
		Routes: func() []v1.GatewayRoute {
			l, _ := g.listenerSpec(port)
			return l.Routes
		},
		// Read per request, as the routes: a change needs no restart.
		TrustedProxies: func() []netip.Prefix {
			l, _ := g.listenerSpec(port)
			return l.TrustedPrefixes()
		},
		Upstream: g.outbound,
		Metrics:  g.p.l7m,
		Logger:   g.p.log,
	}
	srv := l7.NewServer(in, g.p.log)
	srv.HandshakeLog = g.p.handshakes
	srv.Rejected = g.p.l7m.Rejected
	g.p.cfg.Limits.http(srv)
	srv.Acceptor = g.p.acceptor(name)
	go func() { g.p.listeners.done(name, srv.Serve(ln)) }()
	return &gwListener{spec: spec, ln: ln, drain: httpDrainer{srv}.Drain, stop: cancel}, nil
}

func (g *gateway) passthroughConfig(port int) passthrough.Config {
	spec, ok := g.listenerSpec(port)
	if !ok {
		return passthrough.Config{Service: func(string) (string, bool) { return "", false }}
	}
	cfg := passthrough.Config{
		ProxyProtocol:  spec.ProxyProtocol,
		TLSHealthCheck: spec.HealthCheck == "tls",
	}
	if spec.DrainTimeout != "" {
		cfg.DrainTimeout, _ = time.ParseDuration(spec.DrainTimeout)
	}
	for _, t := range spec.Targets {
		cfg.Services = append(cfg.Services, t.Service)
	}
	if spec.DefaultService != "" {
		cfg.Services = append(cfg.Services, spec.DefaultService)
	}
	cfg.Service = func(sni string) (string, bool) {
		for _, t := range spec.Targets {
			if sniMatches(strings.ToLower(t.SNI), sni) {
				return t.Service, true
			}
		}
		return spec.DefaultService, spec.DefaultService != ""
	}
	return cfg
}

// networkConfig is a network listener's: a server name routes to the
// local instance it names (Snapshot.NetworkTargets), and nothing else.
// The instances' own sidecars check their health; the control plane
// drops those that fail.
func (g *gateway) networkConfig(port int) passthrough.Config {
	spec, ok := g.listenerSpec(port)
	a := g.p.cur.Load()
	if !ok || a == nil {
		return passthrough.Config{Service: func(string) (string, bool) { return "", false }}
	}
	cfg := passthrough.Config{
		Registered: true,
		Label: func(sni string) string {
			_, svc, _ := topology.ParseNetworkSNI(sni)
			return svc
		},
	}
	if spec.DrainTimeout != "" {
		cfg.DrainTimeout, _ = time.ParseDuration(spec.DrainTimeout)
	}
	targets := a.snap.NetworkTargets
	for sni := range targets {
		cfg.Services = append(cfg.Services, sni)
	}
	// The "service" of each name is the name itself: one target each.
	cfg.Service = func(sni string) (string, bool) {
		_, ok := targets[sni]
		return sni, ok
	}
	return cfg
}

// networkTarget returns the instance the server name sni names, if it is
// a healthy instance in this gateway's network.
func (g *gateway) networkTarget(sni string) []passthrough.Target {
	a := g.p.cur.Load()
	if a == nil {
		return nil
	}
	addr, ok := a.snap.NetworkTargets[sni]
	if !ok {
		return nil
	}
	return []passthrough.Target{{Addr: addr, Instance: sni}}
}

// setGatewayHealth records a gateway's health in its registration, and
// has the control stream send it when it changed.
func (p *Proxy) setGatewayHealth(ok bool) {
	r := *p.reg.Load()
	if r.Healthy == ok {
		return
	}
	r.Healthy = ok
	p.reg.Store(&r)
	if ok {
		p.m.healthy.Set(1)
	} else {
		p.m.healthy.Set(0)
		p.log.Warn("gateway unhealthy: a network listener is not serving")
	}
	select {
	case p.regCh <- struct{}{}:
	default:
	}
}

// sniMatches: "*.example.com" matches one more label, else equal.
func sniMatches(pattern, sni string) bool {
	if rest, ok := strings.CutPrefix(pattern, "*."); ok {
		label, host, found := strings.Cut(sni, ".")
		return found && label != "" && host == rest
	}
	return pattern == sni
}

// targets returns the registered, healthy instances of service that have
// an edge listener, where pass-through traffic goes.
func (g *gateway) targets(service string) []passthrough.Target {
	a := g.p.cur.Load()
	if a == nil {
		return nil
	}
	return a.edges[service]
}

// outbound returns the L7 outbound to service, under the gateway's
// identity; it is made on first use.
func (g *gateway) outbound(service string) http.Handler {
	g.mu.Lock()
	defer g.mu.Unlock()
	if o := g.outbounds[service]; o != nil {
		return o
	}
	if a := g.p.cur.Load(); a == nil || a.snap.Upstream(service) == nil {
		return nil
	}
	tlsCfg := g.p.src.ClientConfig(certs.ExpectService(service), l4.ALPN)
	o := &l7.Outbound{
		Service: service,
		Source:  g.p.cfg.Service,
		State:   g.p.l7State(service),
		Conn: func(ctx context.Context, ep l4.Endpoint) (*tunnel.Conn, error) {
			return g.pool.Get(ctx, ep, service, tlsCfg)
		},
		Limits: func() *v1.ServiceLimits { return g.p.limits(service) },
		DialUpgrade: func(ctx context.Context, ep l4.Endpoint) (net.Conn, error) {
			return g.pool.DialUpgrade(ctx, ep, service, tlsCfg)
		},
		Unreachable: g.p.unreachable(service),
		Logger:      g.p.log,
		Metrics:     g.p.l7m,
		Tracer:      g.p.tracer,
	}
	g.outbounds[service] = o
	return o
}

// Drain closes every listener and waits for their work until ctx ends,
// and for the drains of listeners closed before; those still running when
// ctx ends are ended then.
func (g *gateway) Drain(ctx context.Context) error {
	g.mu.Lock()
	g.stopped = true
	ls := make([]*gwListener, 0, len(g.open))
	for _, l := range g.open {
		l.ln.Close()
		ls = append(ls, l)
	}
	g.open = map[int]*gwListener{}
	g.mu.Unlock()
	ds := make([]drainer, len(ls))
	for i, l := range ls {
		ds[i] = drainFunc(l.drain)
	}
	deadline, _ := ctx.Deadline()
	err := drainAll(ds, time.Until(deadline))
	stop := context.AfterFunc(ctx, g.endDrains)
	g.drains.Wait()
	stop()
	return err
}

type drainFunc func(context.Context) error

func (f drainFunc) Drain(ctx context.Context) error { return f(ctx) }
