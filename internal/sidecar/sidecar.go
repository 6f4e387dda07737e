package sidecar

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/health"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/topology"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// applied is a snapshot with what the data plane derives from it.
type applied struct {
	snap      *topology.Snapshot
	endpoints map[string][]l4.Endpoint
}

// Proxy is a running sidecar.
type Proxy struct {
	cfg   Config
	log   *slog.Logger
	src   *certs.Source
	api   *client.Client
	token string
	cur   atomic.Pointer[applied]
	// onApply runs after each applied snapshot (set before the stream runs).
	onApply func()
	reg     atomic.Pointer[xds.Registration]
	regCh   chan struct{} // a registration change to send
	ready   chan struct{}
	rdOnce  sync.Once

	// renewAt is when to renew the current certificate (Unix nanoseconds).
	renewAt atomic.Int64

	keyMu  sync.Mutex
	keyPEM []byte // the key of the current certificate, for persistence

	m struct {
		connected prometheus.Gauge
		expiry    prometheus.Gauge
		renewals  *prometheus.CounterVec
		snapshots *prometheus.CounterVec
		healthy   prometheus.Gauge
	}
	l4m *l4.Metrics
}

// New checks cfg and returns a proxy ready to Run.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	token := cfg.Token
	if cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	var caPEM []byte
	if cfg.ServerCAFile != "" {
		b, err := os.ReadFile(cfg.ServerCAFile)
		if err != nil {
			return nil, fmt.Errorf("server CA file: %w", err)
		}
		caPEM = b
	}
	api, err := client.New(client.Config{Addr: cfg.Server, Token: token, CAPEM: caPEM, Timeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	if cfg.Instance == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		cfg.Instance = cfg.Service + "-" + hex.EncodeToString(b)
	}
	p := &Proxy{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "sidecar", "service", cfg.Service, "instance", cfg.Instance),
		src:   &certs.Source{},
		api:   api,
		token: token,
		regCh: make(chan struct{}, 1),
		ready: make(chan struct{}),
	}
	p.registerMetrics(cfg.Registry)
	return p, nil
}

func (p *Proxy) registerMetrics(reg *prometheus.Registry) {
	p.m.connected = prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_proxy_control_plane_connected", Help: "1 while the proxy's stream to the control plane is open."})
	p.m.expiry = prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_proxy_certificate_expiry_timestamp_seconds", Help: "When the proxy's current SVID expires (Unix time)."})
	p.m.renewals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_proxy_certificate_renewals_total", Help: "SVID renewals by result."}, []string{"result"})
	p.m.snapshots = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_proxy_snapshots_total", Help: "Snapshots received, by result (applied|rejected)."}, []string{"result"})
	p.m.healthy = prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_proxy_app_healthy", Help: "1 while the app passes its health check."})
	reg.MustRegister(p.m.connected, p.m.expiry, p.m.renewals, p.m.snapshots, p.m.healthy)
	p.l4m = l4.NewMetrics(reg)
}

// Instance returns the instance ID.
func (p *Proxy) Instance() string { return p.cfg.Instance }

// apply installs a validated snapshot: the trust bundle, the inbound policy
// and the endpoints, all at once.
func (p *Proxy) apply(s *topology.Snapshot) error {
	b, err := certs.NewBundle(s.TrustDomain, []byte(s.RootsPEM))
	if err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	a := &applied{snap: s, endpoints: map[string][]l4.Endpoint{}}
	for _, u := range s.Upstreams {
		eps := make([]l4.Endpoint, 0, len(u.Endpoints))
		for _, e := range u.Endpoints {
			eps = append(eps, l4.Endpoint{Addr: net.JoinHostPort(e.Address, strconv.Itoa(e.Port)), Instance: e.Instance})
		}
		a.endpoints[u.Service] = eps
	}
	p.src.SetBundle(b)
	p.cur.Store(a)
	return nil
}

func (p *Proxy) authorize(peer identity.ID) authz.Decision {
	a := p.cur.Load()
	if a == nil {
		return authz.Decision{Allow: false, Reason: "no configuration yet"}
	}
	return a.snap.Inbound.Check(peer.Service())
}

func (p *Proxy) endpoints(service string) func() []l4.Endpoint {
	return func() []l4.Endpoint {
		if a := p.cur.Load(); a != nil {
			return a.endpoints[service]
		}
		return nil
	}
}

func (p *Proxy) markReady() { p.rdOnce.Do(func() { close(p.ready) }) }

// Run serves until ctx ends, then deregisters, stops accepting and drains.
func (p *Proxy) Run(ctx context.Context) error {
	cfg := p.cfg
	if cert, st, err := loadState(cfg.StateDir, cfg.Service, time.Now()); err != nil {
		p.log.Warn("ignore persisted state", "err", err)
	} else if cert != nil {
		snap := st.Snapshot
		if err := p.apply(snap); err == nil {
			p.keyPEM = []byte(st.KeyPEM)
			p.setCertificate(cert)
			p.markReady()
			p.log.Info("serving from persisted state until the control plane answers", "version", snap.Version, "certExpires", cert.Leaf.NotAfter)
		}
	}

	publicL, err := net.Listen("tcp", cfg.PublicAddr)
	if err != nil {
		return fmt.Errorf("public listener: %w", err)
	}
	defer publicL.Close()
	adminL, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	defer adminL.Close()
	var upLs []net.Listener
	// Upstream listeners serve clients on this host: no keep-alive probes.
	local := net.ListenConfig{KeepAlive: -1}
	for _, u := range cfg.Upstreams {
		l, err := local.Listen(ctx, "tcp", u.Listen)
		if err != nil {
			for _, x := range upLs {
				x.Close()
			}
			return fmt.Errorf("upstream %s listener: %w", u.Service, err)
		}
		upLs = append(upLs, l)
	}

	pubAddr := publicL.Addr().(*net.TCPAddr)
	adv := cfg.AdvertiseAddr
	if adv == "" {
		adv = pubAddr.IP.String()
		if pubAddr.IP.IsUnspecified() {
			adv = "127.0.0.1"
		}
	}
	ups := make([]string, len(cfg.Upstreams))
	for i, u := range cfg.Upstreams {
		ups[i] = u.Service
	}
	p.reg.Store(&xds.Registration{
		Instance: cfg.Instance, Service: cfg.Service, Version: cfg.Version, Address: adv,
		Port: pubAddr.Port, Network: cfg.Network, Upstreams: ups,
	})

	runCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBackground()
	var bg sync.WaitGroup
	goBG := func(f func()) { bg.Add(1); go func() { defer bg.Done(); f() }() }

	goBG(func() { p.serveAdmin(runCtx, adminL) })

	inbound := &l4.Inbound{
		TLS:       p.src.ServerConfig(nil, l4.ALPN),
		Authorize: p.authorize,
		AcceptPlain: func() bool {
			a := p.cur.Load()
			return a != nil && a.snap.MTLS == v1.MTLSPermissive
		},
		// A plain caller has no identity: only a wildcard intention or the
		// default policy can decide it.
		AuthorizePlain: func() authz.Decision { return p.authorize(identity.ID{}) },
		Target:         cfg.AppAddr,
		Logger:         p.log,
		Metrics:        p.l4m,
	}
	goBG(func() { _ = inbound.Serve(publicL) })
	p.onApply = func() { inbound.Reauthorize() }
	pool := l4.NewPool(0, p.l4m)
	defer pool.Close()
	var outbounds []*l4.Outbound
	for i, u := range cfg.Upstreams {
		o := &l4.Outbound{
			Service:   u.Service,
			Endpoints: p.endpoints(u.Service),
			TLS:       p.src.ClientConfig(certs.ExpectService(u.Service), l4.ALPN),
			Pool:      pool,
			Logger:    p.log,
			Metrics:   p.l4m,
		}
		outbounds = append(outbounds, o)
		l := upLs[i]
		goBG(func() { _ = o.Serve(l) })
	}

	// The health of the app is known before the first registration.
	checker := &health.Checker{Addr: cfg.AppAddr, HTTPPath: cfg.HealthHTTPPath, Interval: cfg.HealthInterval}
	firstHealth := make(chan struct{})
	everHealthy := false // only touched on the checker's goroutine
	var fhOnce sync.Once
	goBG(func() {
		checker.Run(runCtx, func(ok bool, err error) {
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
			fhOnce.Do(func() { close(firstHealth) })
			select {
			case p.regCh <- struct{}{}:
			default:
			}
		})
	})
	select {
	case <-firstHealth:
	case <-ctx.Done():
	}

	streamCtx, closeStream := context.WithCancel(runCtx)
	streamDone := make(chan struct{})
	go func() { defer close(streamDone); p.runControl(streamCtx, pool) }()
	goBG(func() { p.runCertificates(runCtx) })

	go func() {
		select {
		case <-p.ready:
			if cfg.OnReady != nil {
				cfg.OnReady(adminL.Addr().String(), publicL.Addr().String())
			}
		case <-ctx.Done():
		}
	}()
	p.log.Info("proxy started", "public", publicL.Addr().String(), "admin", adminL.Addr().String(), "app", cfg.AppAddr)

	<-ctx.Done()
	// Shutdown: leave the mesh first so peers stop choosing this instance,
	// give them a moment to hear it, then stop accepting and drain.
	p.log.Info("shutting down: deregistering")
	closeStream()
	<-streamDone
	grace := min(time.Second, cfg.DrainTimeout/4)
	time.Sleep(grace)
	publicL.Close()
	for _, l := range upLs {
		l.Close()
	}
	dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout-grace)
	defer cancel()
	drainers := []interface{ Drain(context.Context) error }{inbound}
	for _, o := range outbounds {
		drainers = append(drainers, o)
	}
	derrs := make([]error, len(drainers))
	var dwg sync.WaitGroup
	for i, d := range drainers {
		dwg.Add(1)
		go func() { defer dwg.Done(); derrs[i] = d.Drain(dctx) }()
	}
	dwg.Wait()
	stopBackground()
	adminL.Close()
	bg.Wait()
	if err := errors.Join(derrs...); err != nil {
		p.log.Warn("drain incomplete", "err", err)
	} else {
		p.log.Info("drained; stopped")
	}
	return nil
}

// setCertificate installs cert and schedules its renewal at half of its
// remaining life. The CA backdates certificates for clock skew, so half of
// NotBefore..NotAfter would come too early for a short-lived one.
func (p *Proxy) setCertificate(cert *tls.Certificate) {
	now := time.Now()
	p.renewAt.Store(now.Add(cert.Leaf.NotAfter.Sub(now) / 2).UnixNano())
	p.src.SetCertificate(cert)
	p.m.expiry.Set(float64(cert.Leaf.NotAfter.Unix()))
}

// tlsCertificate pairs a chain and key into a tls.Certificate with Leaf.
func tlsCertificate(chainPEM, keyPEM []byte) (*tls.Certificate, error) {
	c, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if _, err := certs.LeafOf(&c); err != nil {
		return nil, err
	}
	return &c, nil
}
