package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/health"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshdns"
	"github.com/trellis-mesh/trellis/internal/proxy/edge"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/proxy/l7"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/tracing"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// Run serves until ctx ends, then deregisters, stops accepting and drains.
//
// Order matters at both ends. At start: persisted state first (so a restart
// during an outage serves at once), then the listeners, then the app's first
// health check, and only then registration. At stop: deregistration first,
// so that peers stop choosing this instance, then the listeners, then the
// drain of open connections.
func (p *Proxy) Run(ctx context.Context) error {
	p.restoreState()
	if p.src.Certificate() == nil {
		// With nothing to serve from, a refused token is fatal: say so now
		// rather than retry forever. An unreachable server is not: the
		// certificate loop keeps trying.
		if err := p.renew(ctx); err != nil {
			var ae *client.Error
			if errors.As(err, &ae) && (ae.Status == 401 || ae.Status == 403) {
				return fmt.Errorf("control plane refused the token: %s (check --token-file)", ae.Message)
			}
			p.log.Warn("no certificate yet; will retry", "err", err)
		}
	}
	ls, err := p.listen(ctx)
	if err != nil {
		return err
	}
	defer ls.closeAll()
	p.reg.Store(p.registration(ls.public.Addr().(*net.TCPAddr), ls.edgePort()))
	if err := p.startTracing(); err != nil {
		return err
	}
	defer p.stopTracing()

	// Background work outlives ctx until the drain is over. The edge
	// certificates' keepers end with runCtx: waited for after it ends,
	// on every way out (deferred calls run last first).
	defer p.certWork.Wait()
	runCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBackground()
	var bg sync.WaitGroup
	goBG := func(f func()) { bg.Add(1); go func() { defer bg.Done(); f() }() }

	// Each listener's accept loop reports how it ended: a listener that
	// fails for good (not closed by us) marks the proxy not ready and
	// ends Run with its error, rather than leaving a port that no longer
	// accepts behind a /ready that says all is well.
	serve := func(name string, f func() error) {
		goBG(func() { p.listeners.done(name, f()) })
	}
	serve("admin", func() error { return p.serveAdmin(runCtx, ls.admin) })
	pool := l4.NewPool(0, 0, p.l4m)
	pool.Tunnel = p.cfg.Limits.tunnel(tunnel.Config{})
	pool.Logger = p.log
	pool.Guard = p.guard
	defer pool.Close()
	dp, err := p.dataPlane(runCtx, pool)
	if err != nil {
		return err
	}
	var gw *gateway
	if p.cfg.Gateway != nil {
		gw = newGateway(runCtx, p, pool)
		gw.reconcile() // from the persisted snapshot, if any
	}
	p.onApply = func() {
		dp.inbound.Reauthorize()
		if gw != nil {
			gw.reconcile()
		}
	}
	serve("public", func() error { return p.acceptor("public").Serve(ls.public, dp.inbound.Handle) })
	if dp.edge != nil {
		dp.edge.Acceptor = p.acceptor("edge")
		serve("edge", func() error { return dp.edge.Serve(ls.edge) })
	}
	if ls.ingress != nil {
		serve("ingress", func() error { return p.acceptor("ingress").Serve(ls.ingress, dp.inbound.Handle) })
	}
	if ls.egress != nil {
		serve("egress", func() error { return p.serveEgress(ls.egress, dp) })
	}
	if ls.dns != nil {
		serve("dns", func() error { return meshdns.Serve(runCtx, ls.dns, p.dns) })
	}
	for i, u := range dp.upstreams {
		name := "upstream:" + u.service
		serve(name, func() error { return p.serveUpstream(name, ls.upstreams[i], u) })
	}

	firstHealth := make(chan struct{})
	if gw != nil {
		// No app to check: a gateway is healthy while it runs and
		// serves its network listeners, which reconcile (above, and
		// per snapshot) records.
		close(firstHealth)
	} else {
		goBG(func() { p.checkHealth(runCtx, firstHealth) })
	}
	select {
	case <-firstHealth:
	case <-ctx.Done():
	}
	streamCtx, closeStream := context.WithCancel(runCtx)
	streamDone := make(chan struct{})
	go func() { defer close(streamDone); p.runControl(streamCtx, pool) }()
	goBG(func() { p.runCertificates(runCtx) })
	goBG(func() { p.runPersist(runCtx) })
	goBG(func() {
		select {
		case <-p.ready:
			if p.cfg.OnReady != nil {
				p.cfg.OnReady(ls.admin.Addr().String(), ls.public.Addr().String())
			}
		case <-runCtx.Done(): // not ctx: a failed listener stops Run too
		}
	})
	p.log.Info("proxy started", "public", ls.public.Addr().String(), "admin", ls.admin.Addr().String(), "app", p.cfg.AppAddr)
	if ls.edge != nil {
		p.log.Info("edge listener started", "addr", ls.edge.Addr().String(), "mode", p.cfg.Edge.Mode)
	}
	if ls.dns != nil {
		p.log.Info("DNS listener started", "addr", ls.dns.Addr(), "mode", p.cfg.DNS.Mode, "upstream", p.dns.Upstream())
	}
	if ls.egress != nil {
		p.log.Info("transparent listeners started", "ingress", p.cfg.Transparent.IngressListen, "egress", ls.egress.Addr().String())
	}

	var failure error
	select {
	case <-ctx.Done():
	case failure = <-p.listeners.failed:
		p.log.Error("stopping: a listener failed", "err", failure)
	}
	p.log.Info("shutting down: deregistering")
	closeStream()
	<-streamDone
	grace := min(time.Second, p.cfg.DrainTimeout/4)
	time.Sleep(grace) // let peers hear of the deregistration
	ls.closeServing()
	drainers := []drainer{dp.inbound, dp.inboundHTTP}
	if dp.edge != nil {
		drainers = append(drainers, dp.edge)
	}
	if gw != nil {
		drainers = append(drainers, gw)
	}
	for _, u := range dp.upstreams {
		drainers = append(drainers, u.tcp, httpDrainer{u.http})
	}
	err = drainAll(drainers, p.cfg.DrainTimeout-grace)
	stopBackground()
	ls.admin.Close()
	bg.Wait()
	p.api.CloseIdleConnections() // their goroutines are the proxy's too
	if err != nil {
		p.log.Warn("drain incomplete", "err", err)
	} else {
		p.log.Info("drained; stopped")
	}
	return failure
}

// startTracing makes the tracer of Config.Tracing, if any.
func (p *Proxy) startTracing() error {
	if p.cfg.Tracing == nil {
		return nil
	}
	tc, err := p.cfg.Tracing.config(&p.cfg)
	if err != nil {
		return err
	}
	tr, err := tracing.New(tc, tracing.Options{Metrics: p.tracem, Logger: p.log})
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	if !tc.Endpoint.Loopback() && !tc.Endpoint.TLS {
		p.log.Warn("spans leave for the collector unencrypted", "endpoint", tc.Endpoint.String())
	}
	p.tracer = tr
	p.log.Info("exporting spans", "endpoint", tc.Endpoint.String(), "protocol", tc.Endpoint.Protocol, "sampling", tc.Sampling)
	return nil
}

// stopTracing exports the spans still queued, for at most tracingFlush.
func (p *Proxy) stopTracing() {
	if p.tracer == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), tracingFlush)
	defer cancel()
	if err := p.tracer.Shutdown(ctx); err != nil {
		p.log.Warn("span export at shutdown incomplete", "err", err)
	}
}

// tracingFlush bounds the wait for the last spans at shutdown.
const tracingFlush = 5 * time.Second

// restoreState serves the persisted snapshot and certificate, if any, until
// the control plane answers.
func (p *Proxy) restoreState() {
	cert, st, err := loadState(p.cfg.StateDir, p.cfg.Service, time.Now())
	if err != nil {
		p.log.Warn("ignore persisted state; asking the control plane for a certificate", "err", err)
		return
	}
	if cert == nil {
		return
	}
	if err := p.apply(st.Snapshot); err != nil {
		p.log.Warn("ignore persisted snapshot", "err", err)
		return
	}
	p.setCredential(cert, []byte(st.KeyPEM))
	p.markReady()
	p.log.Info("serving from persisted state until the control plane answers", "version", st.Snapshot.Version, "certExpires", cert.Leaf.NotAfter)
}

// listenPublic opens the public listener. With port 0 it first tries the
// port persisted in the state dir: callers whose configuration still names
// this instance's old endpoint (from a snapshot of before the restart)
// reach it again; another free port only when that one is taken.
func (p *Proxy) listenPublic() (net.Listener, error) {
	host, port, err := net.SplitHostPort(p.cfg.PublicAddr)
	if err != nil || port != "0" {
		return net.Listen("tcp", p.cfg.PublicAddr)
	}
	if old := persistedPort(p.cfg.StateDir); old != 0 {
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(old)))
		if err == nil {
			p.log.Info("public listener on the persisted port", "port", old)
			return l, nil
		}
		p.log.Warn("persisted public port not free; taking another", "port", old, "err", err)
	}
	return net.Listen("tcp", p.cfg.PublicAddr)
}

// listeners are the sockets a proxy serves.
type listeners struct {
	public, admin net.Listener
	edge          net.Listener       // nil without Config.Edge
	ingress       net.Listener       // nil without Config.Transparent, or when it is public
	egress        net.Listener       // nil without Config.Transparent
	upstreams     []net.Listener     // in the order of Config.Upstreams
	dns           *meshdns.Listeners // nil without Config.DNS
}

func (p *Proxy) listen(ctx context.Context) (*listeners, error) {
	ls := &listeners{}
	var err error
	if ls.public, err = p.listenPublic(); err != nil {
		return nil, fmt.Errorf("public listener: %w", err)
	}
	if ls.admin, err = net.Listen("tcp", p.cfg.AdminAddr); err != nil {
		ls.closeAll()
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("admin listener: %w: %s", ErrAdminAddrInUse, p.cfg.AdminAddr)
		}
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	if p.cfg.Edge != nil {
		if ls.edge, err = net.Listen("tcp", p.cfg.Edge.Listen); err != nil {
			ls.closeAll()
			return nil, fmt.Errorf("edge listener: %w", err)
		}
	}
	if t := p.cfg.Transparent; t != nil {
		if t.IngressListen != p.cfg.PublicAddr {
			if ls.ingress, err = listenTransparent(t.IngressListen); err != nil {
				ls.closeAll()
				return nil, fmt.Errorf("transparent ingress listener: %w", err)
			}
		}
		if ls.egress, err = listenTransparent(t.EgressListen); err != nil {
			ls.closeAll()
			return nil, fmt.Errorf("transparent egress listener: %w", err)
		}
	}
	if p.cfg.DNS != nil {
		if ls.dns, err = meshdns.Listen(p.cfg.DNS.Listen); err != nil {
			ls.closeAll()
			return nil, fmt.Errorf("DNS listener: %w", err)
		}
	}
	// Upstream listeners serve clients on this host: no keep-alive probes.
	local := net.ListenConfig{KeepAlive: -1}
	for _, u := range p.cfg.Upstreams {
		l, err := local.Listen(ctx, "tcp", u.Listen)
		if err != nil {
			ls.closeAll()
			return nil, fmt.Errorf("upstream %s listener: %w", u.Service, err)
		}
		ls.upstreams = append(ls.upstreams, l)
	}
	return ls, nil
}

// closeServing stops accepting mesh and client connections.
func (ls *listeners) closeServing() {
	if ls.public != nil {
		ls.public.Close()
	}
	for _, l := range []net.Listener{ls.edge, ls.ingress, ls.egress} {
		if l != nil {
			l.Close()
		}
	}
	for _, l := range ls.upstreams {
		l.Close()
	}
}

func (ls *listeners) closeAll() {
	ls.closeServing()
	if ls.dns != nil {
		ls.dns.Close() // else meshdns.Serve closes it as Run ends
	}
	if ls.admin != nil {
		ls.admin.Close()
	}
}

// edgePort is the edge listener's port, or 0.
func (ls *listeners) edgePort() int {
	if ls.edge == nil {
		return 0
	}
	return ls.edge.Addr().(*net.TCPAddr).Port
}

// registration describes this instance; peers dial AdvertiseAddr, or the
// public listener's IP, or loopback when that is unspecified. A gateway in
// tls-passthrough mode dials the same address at the edge port.
func (p *Proxy) registration(pub *net.TCPAddr, edgePort int) *xds.Registration {
	adv := p.cfg.AdvertiseAddr
	if adv == "" {
		adv = pub.IP.String()
		if pub.IP.IsUnspecified() {
			adv = "127.0.0.1"
		}
	}
	ups := make([]string, len(p.cfg.Upstreams))
	for i, u := range p.cfg.Upstreams {
		ups[i] = u.Service
	}
	return &xds.Registration{
		Instance: p.cfg.Instance, Service: p.cfg.Service, Version: p.cfg.Version, Address: adv,
		Port: pub.Port, EdgePort: edgePort, Network: p.cfg.Network, Upstreams: ups,
		NodeInfo: xds.NodeInfo{NodeName: p.cfg.Node}, Claim: p.claim,
	}
}

// dataPlane is what serves traffic: the inbound (the tunnel, and HTTP/2
// for L7 callers) and, per upstream, an L4 and an L7 outbound.
type dataPlane struct {
	inbound     *l4.Inbound
	inboundHTTP *l7.Inbound
	edge        *edge.Listener // nil without Config.Edge
	upstreams   []*upstream
}

type upstream struct {
	service string
	tcp     *l4.Outbound
	web     *l7.Outbound
	http    *l7.Server
}

// dataPlane builds the data plane, all of it reading the current snapshot
// and certificate.
func (p *Proxy) dataPlane(ctx context.Context, pool *l4.Pool) (*dataPlane, error) {
	dp := &dataPlane{}
	if p.cfg.Edge != nil {
		e, err := p.edgeListener(ctx)
		if err != nil {
			return nil, err
		}
		dp.edge = e
	}
	dp.inboundHTTP = &l7.Inbound{
		Self:      p.selfID,
		Authorize: p.authorizeRequest,
		Target:    p.cfg.AppAddr,
		Protocol:  func() string { return p.protocol(p.cfg.Service) },
		Logger:    p.log,
		Metrics:   p.l7m,
		Tracer:    p.tracer,
	}
	if dp.edge != nil {
		// An HTTP service's edge traffic (TLS ended here) goes through
		// the L7 checks: no outside client writes the peer header.
		dp.edge.HTTP = func() bool { return p.protocol(p.cfg.Service) != v1.ProtocolTCP }
		dp.edge.ServeHTTP = dp.inboundHTTP.ServeEdge
		trusted := p.cfg.Edge.trustedPrefixes()
		dp.inboundHTTP.EdgeTrustedProxies = func() []netip.Prefix { return trusted }
	}
	dp.inbound = &l4.Inbound{
		TLS:       p.src.ServerConfig(nil, l4.ALPN, l7.ALPN),
		Authorize: p.authorize,
		AcceptPlain: func() bool {
			a := p.cur.Load()
			return a != nil && a.snap.MTLS == v1.MTLSPermissive
		},
		// A plain caller has no identity: only a wildcard intention or the
		// default policy can decide it.
		AuthorizePlain: func() authz.Decision { return p.authorize(identity.ID{}) },
		// An HTTP service's callers, plain ones included, all go through
		// the L7 inbound's checks: nothing reaches its app as raw bytes.
		HTTPOnly:       func() bool { return p.protocol(p.cfg.Service) != v1.ProtocolTCP },
		ServePlainHTTP: dp.inboundHTTP.ServePlain,
		ServeRequest:   dp.inboundHTTP.ServeStream,
		MaxHeaderBytes: l7.TunnelHeaderBytes,
		Tunnel:         p.cfg.Limits.tunnel(tunnel.Config{}),
		ServeUpgrade:   dp.inboundHTTP.ServeUpgrade,
		Target:         p.cfg.AppAddr,
		Logger:         p.log,
		Metrics:        p.l4m,
		Guard:          p.guard,
		HandshakeLog:   p.handshakes,
	}
	for _, u := range p.cfg.Upstreams {
		tunnelTLS := p.src.ClientConfig(certs.ExpectService(u.Service), l4.ALPN)
		web := &l7.Outbound{
			Service: u.Service,
			Source:  p.cfg.Service,
			State:   p.l7State(u.Service),
			Conn: func(ctx context.Context, ep l4.Endpoint) (*tunnel.Conn, error) {
				return pool.Get(ctx, ep, u.Service, tunnelTLS)
			},
			Limits: func() *v1.ServiceLimits { return p.limits(u.Service) },
			DialUpgrade: func(ctx context.Context, ep l4.Endpoint) (net.Conn, error) {
				return pool.DialUpgrade(ctx, ep, u.Service, tunnelTLS)
			},
			Unreachable: p.unreachable(u.Service),
			Logger:      p.log,
			Metrics:     p.l7m,
			Tracer:      p.tracer,
		}
		srv := l7.NewServer(web, p.log)
		srv.Rejected = p.l7m.Rejected
		p.cfg.Limits.http(srv)
		dp.upstreams = append(dp.upstreams, &upstream{
			service: u.Service,
			tcp: &l4.Outbound{
				Service:     u.Service,
				Endpoints:   p.endpoints(u.Service),
				Unreachable: p.unreachable(u.Service),
				TLS:         tunnelTLS,
				Pool:        pool,
				MaxConnections: func() int {
					if l := p.limits(u.Service); l != nil {
						return l.MaxConnections
					}
					return 0
				},
				Logger:  p.log,
				Metrics: p.l4m,
			},
			web:  web,
			http: srv,
		})
	}
	return dp, nil
}

// selfID is the identity of the current certificate. The inbound asks
// for it on every request, so it is parsed once per certificate.
func (p *Proxy) selfID() identity.ID {
	c := p.src.Certificate()
	if c == nil {
		return identity.ID{}
	}
	if s := p.self.Load(); s != nil && s.cert == c {
		return s.id
	}
	id, err := identity.FromCertificate(c.Leaf)
	if err != nil {
		return identity.ID{}
	}
	p.self.Store(&selfCert{cert: c, id: id})
	return id
}

type selfCert struct {
	cert *tls.Certificate
	id   identity.ID
}

// serveUpstream hands each client connection of an upstream listener to
// the L4 or the L7 outbound, by the upstream's protocol when it arrives.
func (p *Proxy) serveUpstream(name string, l net.Listener, u *upstream) error {
	return p.acceptor(name).Serve(l, func(c net.Conn) { p.serveUpstreamConn(c, u) })
}

// serveUpstreamConn serves c on the calling goroutine until it is done.
func (p *Proxy) serveUpstreamConn(c net.Conn, u *upstream) {
	if p.protocol(u.service) == v1.ProtocolTCP {
		u.tcp.Handle(c)
	} else {
		u.http.RunConn(c)
	}
}

// httpDrainer drains an l7.Server: idle connections close at once, busy
// ones after their request, or when ctx ends: then they are cut, so that
// none outlives the drain.
type httpDrainer struct{ s *l7.Server }

func (d httpDrainer) Drain(ctx context.Context) error {
	err := d.s.Shutdown(ctx)
	if err != nil {
		d.s.Close()
	}
	return err
}

// checkHealth checks the app until ctx ends, records each change in the
// registration (the control stream sends it) and closes first after the
// first result.
func (p *Proxy) checkHealth(ctx context.Context, first chan<- struct{}) {
	checker := &health.Checker{Addr: p.cfg.AppAddr, HTTPPath: p.cfg.HealthHTTPPath, Interval: p.cfg.HealthInterval}
	everHealthy, reported := false, false
	checker.Run(ctx, func(ok bool, err error) {
		r := *p.reg.Load()
		r.Healthy = ok
		p.reg.Store(&r)
		switch {
		case ok:
			everHealthy = true
			p.m.healthy.Set(1)
			p.log.Info("app is healthy")
		case !everHealthy:
			// An app that is still starting is not news.
			p.m.healthy.Set(0)
			p.log.Info("waiting for the app to answer its health check", "err", err)
		default:
			p.m.healthy.Set(0)
			p.log.Warn("app is unhealthy", "err", err)
		}
		if !reported {
			reported = true
			close(first)
		}
		select {
		case p.regCh <- struct{}{}:
		default:
		}
	})
}

type drainer interface{ Drain(context.Context) error }

// drainAll drains every listener's connections in parallel within timeout.
func drainAll(ds []drainer, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	errs := make([]error, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = d.Drain(ctx) }()
	}
	wg.Wait()
	return errors.Join(errs...)
}
