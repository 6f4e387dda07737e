package sidecar

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
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
	"github.com/trellis-mesh/trellis/internal/httpmatch"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshdns"
	"github.com/trellis-mesh/trellis/internal/proxy/handshake"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/proxy/l7"
	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
	"github.com/trellis-mesh/trellis/internal/proxy/passthrough"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/topology"
	"github.com/trellis-mesh/trellis/internal/tracing"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// applied is a snapshot with what the data plane derives from it.
type applied struct {
	snap      *topology.Snapshot
	endpoints map[string][]l4.Endpoint
	routers   map[string]*l7.Router // HTTP upstreams
	protocols map[string]string
	limits    map[string]*v1.ServiceLimits
	edges     map[string][]passthrough.Target // instances with an edge listener
	byAddr    map[netip.Addr]string           // addresses of upstream instances dialed directly, for transparent egress
	byVIP     map[netip.Addr]string           // upstreams' virtual IPs (meshdns.VIPs), for transparent egress
}

// Proxy is a running sidecar.
type Proxy struct {
	cfg   Config
	log   *slog.Logger
	src   *certs.Source
	api   *client.Client
	token string
	cur   atomic.Pointer[applied]
	self  atomic.Pointer[selfCert] // selfID's cache
	// onApply runs after each applied snapshot (set before the stream runs).
	onApply func()
	// certWork are the goroutines that keep mesh-issued edge certificates
	// (edgeCert); they end with the context they were given, and Run
	// waits for them.
	certWork sync.WaitGroup
	reg      atomic.Pointer[xds.Registration]
	regCh    chan struct{} // a registration change to send
	// claim proves to a server that a stream comes from the process that
	// registered this instance, so another server may take over its
	// registration when the stream moves; made at start and kept only in
	// the state dir (0600, beside the private key) when there is one, so
	// that a restart of this proxy takes its registration back.
	claim  string
	ready  chan struct{}
	rdOnce sync.Once

	// renewAt is when to renew the current certificate (Unix nanoseconds).
	renewAt atomic.Int64
	// renewSoon wakes the certificate loop before renewAt.
	renewSoon chan struct{}

	// cred is the current certificate with its key's PEM, one value so
	// that persistence never pairs a key with another key's certificate.
	cred atomic.Pointer[credential]
	// persistCh asks runPersist, the one writer of the state file, to
	// save the current state (one slot: requests made while it writes
	// fold into one).
	persistCh chan struct{}

	m struct {
		connected prometheus.Gauge
		expiry    prometheus.Gauge
		renewals  *prometheus.CounterVec
		snapshots *prometheus.CounterVec
		healthy   prometheus.Gauge
		egress    *prometheus.CounterVec
	}
	l4m *l4.Metrics
	l7m *l7.Metrics
	// tracem counts the spans tracing dropped (nil without
	// Config.Tracing); tracer makes and exports them, set by Run before
	// anything serves and shut down by it after the drain.
	tracem *tracing.Metrics
	tracer *tracing.Tracer
	// guard watches every mesh mTLS connection, inbound and pooled, and
	// retires those whose trust ends (a root dropped, a leaf expiring).
	guard *l4.Guard
	// handshakes logs the failed TLS handshakes of every listener, under
	// one rate limit.
	handshakes *handshake.Log
	// admission is the process-wide connection gate every listener's
	// accept loop shares; listenerm counts what those loops see.
	admission *netconn.Admission
	listenerm *listenerMetrics
	// listeners records listeners that failed for good.
	listeners *listenerHealth
	// dns answers the app's DNS queries; nil without Config.DNS. It is
	// fed every applied snapshot.
	dns *meshdns.Resolver
	// vips are the upstreams' virtual IPs, shared by dns (which answers
	// them) and the transparent egress (which maps them back): an
	// address once answered stays its service's.
	vips *meshdns.VIPTable
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
		certs.WarnIfShared(cfg.Logger, "token file", cfg.TokenFile)
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
	src := &certs.Source{}
	api, err := client.New(client.Config{
		Addr: cfg.Server, Token: token, CAPEM: caPEM, Timeout: 10 * time.Second,
		// The server's certificate comes from the mesh CA: after a CA
		// rotation only the bundle of the latest snapshot still names it.
		ExtraRoots: func() []byte {
			if b := src.Bundle(); b != nil {
				return b.PEM
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	if cfg.Instance == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		cfg.Instance = cfg.Service + "-" + hex.EncodeToString(b)
	}
	claim, err := loadClaim(cfg.StateDir)
	if err != nil {
		cfg.Logger.Warn("registration claim not kept: a restart waits out its former registration's grace", "err", err)
	}
	p := &Proxy{
		claim:     claim,
		cfg:       cfg,
		log:       cfg.Logger.With("component", "sidecar", "service", cfg.Service, "instance", cfg.Instance),
		src:       src,
		api:       api,
		token:     token,
		regCh:     make(chan struct{}, 1),
		renewSoon: make(chan struct{}, 1),
		ready:     make(chan struct{}),
		persistCh: make(chan struct{}, 1),
		admission: &netconn.Admission{MaxConnections: cfg.Limits.MaxConnections, FDHighWater: cfg.Limits.FDHighWater},
		listeners: newListenerHealth(),
		vips:      &meshdns.VIPTable{},
	}
	p.registerMetrics(cfg.Registry)
	if d := cfg.DNS; d != nil {
		listeners := map[string]netip.AddrPort{}
		for _, u := range cfg.Upstreams {
			if ap, err := netip.ParseAddrPort(u.Listen); err == nil {
				listeners[u.Service] = ap
			}
		}
		r, err := meshdns.NewResolver(meshdns.ResolverConfig{
			Mode: d.Mode, Upstream: d.Upstream, Listeners: listeners, VIPs: p.vips,
			Logger: p.log, Metrics: meshdns.NewMetrics(cfg.Registry),
		})
		if err != nil {
			return nil, err
		}
		p.dns = r
		if (d.Mode == "" || d.Mode == meshdns.ModeVIP) && cfg.Transparent == nil {
			p.log.Warn("dns mode vip answers virtual IPs, which only the transparent egress serves: without --egress-port (and redirect rules) the app cannot reach them; use --dns-mode local for explicit mode")
		}
	}
	p.handshakes = &handshake.Log{Logger: p.log}
	p.guard = &l4.Guard{
		Bundle: src.Bundle, Own: src.Certificate,
		Drain: cfg.DrainTimeout, Logger: p.log, Metrics: p.l4m,
	}
	return p, nil
}

func (p *Proxy) registerMetrics(reg *prometheus.Registry) {
	p.m.connected = prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_proxy_control_plane_connected", Help: "1 while the proxy's stream to the control plane is open."})
	p.m.expiry = prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_proxy_certificate_expiry_timestamp_seconds", Help: "When the proxy's current SVID expires (Unix time)."})
	p.m.renewals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_proxy_certificate_renewals_total", Help: "SVID renewals by result."}, []string{"result"})
	p.m.snapshots = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_proxy_snapshots_total", Help: "Snapshots received, by result (applied|rejected)."}, []string{"result"})
	p.m.healthy = prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_proxy_app_healthy", Help: "1 while the app passes its health check."})
	p.m.egress = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_proxy_transparent_egress_total", Help: "Redirected outbound connections, by how their upstream was found (address|host) or refused|error."}, []string{"result"})
	reg.MustRegister(p.m.connected, p.m.expiry, p.m.renewals, p.m.snapshots, p.m.healthy, p.m.egress)
	p.listenerm = newListenerMetrics(reg, p.admission)
	p.l4m = l4.NewMetrics(reg)
	p.l7m = l7.NewMetrics(reg)
	if p.cfg.Tracing != nil {
		p.tracem = tracing.NewMetrics(reg)
	}
	// One counter for every HTTP/2 connection of the process (the tunnel
	// serves the sidecar-to-sidecar port and the h2/h2c listeners).
	reg.MustRegister(protocolErrorsCollector{})
}

// protocolErrorsDesc is trellis_http2_protocol_errors_total, the tunnel's
// counts of HTTP/2 connections ended for a protocol error or a flood.
var protocolErrorsDesc = prometheus.NewDesc("trellis_http2_protocol_errors_total",
	"HTTP/2 connections ended with a GOAWAY because the peer broke the protocol or flooded the connection, by reason (a flood such as ping_flood or rapid_reset, or the GOAWAY's error code such as protocol_error).",
	[]string{"reason"}, nil)

// protocolErrorsCollector exports the tunnel package's counts, which it
// keeps without prometheus so as to stay a leaf.
type protocolErrorsCollector struct{}

func (protocolErrorsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- protocolErrorsDesc }

func (protocolErrorsCollector) Collect(ch chan<- prometheus.Metric) {
	for reason, n := range tunnel.ProtocolErrorCounts() {
		ch <- prometheus.MustNewConstMetric(protocolErrorsDesc, prometheus.CounterValue, float64(n), reason)
	}
}

// apply installs a validated snapshot: the trust bundle, the inbound policy
// and the endpoints, all at once.
func (p *Proxy) apply(s *topology.Snapshot) error {
	b, err := certs.NewBundle(s.TrustDomain, []byte(s.RootsPEM))
	if err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	a := &applied{snap: s, endpoints: map[string][]l4.Endpoint{}, routers: map[string]*l7.Router{}, protocols: map[string]string{}, limits: map[string]*v1.ServiceLimits{}, edges: map[string][]passthrough.Target{}, byAddr: map[netip.Addr]string{}, byVIP: map[netip.Addr]string{}}
	names := make([]string, len(s.Upstreams))
	for i, u := range s.Upstreams {
		names[i] = u.Service
	}
	for svc, vip := range p.vips.Assign(names) {
		a.byVIP[vip] = svc
	}
	for _, u := range s.Upstreams {
		eps := make([]l4.Endpoint, 0, len(u.Endpoints))
		for _, e := range u.Endpoints {
			eps = append(eps, l4.Endpoint{Addr: net.JoinHostPort(e.Address, strconv.Itoa(e.Port)), Instance: e.Instance, Version: e.Version, Via: e.Gateways, SNI: e.SNI})
			if len(e.Gateways) == 0 {
				// An address of another network, reached through its
				// gateways, may also be a local one (overlapping
				// ranges): it names nothing the app can connect to.
				indexAddr(a.byAddr, e.Address, u.Service)
			}
		}
		a.endpoints[u.Service] = eps
		for _, e := range u.Endpoints {
			if e.EdgePort > 0 {
				a.edges[u.Service] = append(a.edges[u.Service], passthrough.Target{Addr: net.JoinHostPort(e.Address, strconv.Itoa(e.EdgePort)), Instance: e.Instance})
			}
		}
		a.protocols[u.Service] = u.Protocol
		a.limits[u.Service] = u.Limits
		if u.Protocol != v1.ProtocolTCP {
			rt, err := l7.Compile(u.Route)
			if err != nil {
				return fmt.Errorf("upstream %s: route %w", u.Service, err)
			}
			a.routers[u.Service] = rt
		}
	}
	if err := s.Inbound.Compile(); err != nil {
		return fmt.Errorf("inbound policy: %w", err)
	}
	old := p.src.Bundle()
	p.src.SetBundle(b)
	p.cur.Store(a)
	if p.dns != nil {
		p.dns.Update(s)
	}
	if old != nil && (old.TrustDomain != b.TrustDomain || !bytes.Equal(old.PEM, b.PEM)) {
		// Open connections were admitted by the old roots: those the new
		// ones do not verify go (GOAWAY, drain, close).
		n := p.guard.Recheck(b)
		p.log.Info("trust bundle changed; open connections verified again", "retired", n, "open", p.guard.Open())
	}
	if cert := p.src.Certificate(); cert != nil && !trusted(cert, b) {
		// The mesh's CA changed under a persisted certificate (the
		// control plane was rebuilt, or a root was removed): peers will
		// refuse it, so renew now instead of at half-life.
		p.log.Warn("certificate not trusted by the new trust bundle; renewing now")
		select {
		case p.renewSoon <- struct{}{}:
		default:
		}
	}
	return nil
}

// trusted reports whether cert verifies under b.
func trusted(cert *tls.Certificate, b *certs.Bundle) bool {
	chain := []*x509.Certificate{cert.Leaf}
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return false
		}
		chain = append(chain, c)
	}
	_, err := certs.VerifySVID(chain, b, time.Now())
	return err == nil
}

// errGatewayInbound refuses mesh traffic to a gateway: it has no app.
var errGatewayInbound = authz.Decision{Allow: false, Reason: "a gateway accepts no mesh traffic", Code: authz.CodeGateway}

// authorizeRequest decides one HTTP request to this proxy's app.
func (p *Proxy) authorizeRequest(peer identity.ID, r *httpmatch.Request) authz.Decision {
	if p.cfg.Gateway != nil {
		return errGatewayInbound
	}
	a := p.cur.Load()
	if a == nil {
		return authz.Decision{Allow: false, Reason: "no configuration yet", Code: authz.CodeNotReady}
	}
	return a.snap.Inbound.CheckRequest(peer.Service(), r)
}

func (p *Proxy) authorize(peer identity.ID) authz.Decision {
	if p.cfg.Gateway != nil {
		return errGatewayInbound
	}
	a := p.cur.Load()
	if a == nil {
		return authz.Decision{Allow: false, Reason: "no configuration yet", Code: authz.CodeNotReady}
	}
	return a.snap.Inbound.Check(peer.Service())
}

// l7State returns the router and endpoints of an HTTP upstream.
func (p *Proxy) l7State(service string) func() (*l7.Router, []l4.Endpoint) {
	fallback, _ := l7.Compile(nil)
	return func() (*l7.Router, []l4.Endpoint) {
		a := p.cur.Load()
		if a == nil {
			return fallback, nil
		}
		rt := a.routers[service]
		if rt == nil {
			rt = fallback
		}
		return rt, a.endpoints[service]
	}
}

// limits returns an upstream's circuit breakers now, or nil.
func (p *Proxy) limits(service string) *v1.ServiceLimits {
	if a := p.cur.Load(); a != nil {
		return a.limits[service]
	}
	return nil
}

// protocol returns how service speaks now: an upstream's protocol, or this
// proxy's own; tcp until a snapshot says otherwise.
func (p *Proxy) protocol(service string) string {
	a := p.cur.Load()
	switch {
	case a == nil:
		return v1.ProtocolTCP
	case service == p.cfg.Service:
		if a.snap.Protocol == "" {
			return v1.ProtocolTCP
		}
		return a.snap.Protocol
	case a.protocols[service] != "":
		return a.protocols[service]
	}
	return v1.ProtocolTCP
}

// unreachable returns why endpoints of service are missing now (networks
// whose gateways are all down), or "".
func (p *Proxy) unreachable(service string) func() string {
	return func() string {
		if a := p.cur.Load(); a != nil {
			if u := a.snap.Upstream(service); u != nil {
				return u.Unreachable
			}
		}
		return ""
	}
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

// credential is a certificate and the PEM of its private key.
type credential struct {
	cert   *tls.Certificate
	keyPEM []byte
}

// setCredential installs cert, whose private key keyPEM encodes, as one
// value for persistence, then serves it.
func (p *Proxy) setCredential(cert *tls.Certificate, keyPEM []byte) {
	p.cred.Store(&credential{cert: cert, keyPEM: keyPEM})
	p.setCertificate(cert)
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

// Snapshot returns the snapshot the proxy serves with, nil before the
// first. It is for a process that runs proxies in-process (trellis up)
// and waits until they see each other.
func (p *Proxy) Snapshot() *topology.Snapshot {
	if a := p.cur.Load(); a != nil {
		return a.snap
	}
	return nil
}
