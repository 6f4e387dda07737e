package control

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/http2"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
	"github.com/trellis-mesh/trellis/internal/ratelog"
	"github.com/trellis-mesh/trellis/internal/stats"
	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// Defaults.
const (
	DefaultListen      = "127.0.0.1:7700"
	DefaultTrustDomain = "trellis.local"
	DefaultLeaseTTL    = 10 * time.Second
	// DefaultRegistrationGrace is how long an instance outlives the
	// server that held its stream: long enough for its proxy to notice
	// and reconnect to another server.
	DefaultRegistrationGrace = 30 * time.Second
	// AdminTokenFileName is where the first admin token is saved in the
	// data dir.
	AdminTokenFileName = "admin-token"
)

// Config configures a control plane server. The zero value of every field
// but DataDir means its default.
type Config struct {
	// DataDir holds the embedded etcd, the CA (when not imported) and the
	// first admin token. Created 0700 if missing; one that group or others
	// may read is made 0700 (with a warning), and one that another user
	// owns or others may write to is refused (see store.PrivateDir).
	DataDir string
	// Listen is the HTTPS address of the API and the proxy stream.
	Listen string
	// EtcdEndpoints, when set, use an existing etcd cluster instead of the
	// embedded one: http:// URLs, or https:// ones for TLS.
	EtcdEndpoints []string
	// EtcdCAFile holds the CAs (PEM) that sign the etcd cluster's serving
	// certificates; empty means the system's roots. https endpoints only.
	EtcdCAFile string
	// EtcdCertFile and EtcdKeyFile are a client certificate and its key
	// (PEM), for an etcd that runs with --client-cert-auth; both or neither.
	EtcdCertFile, EtcdKeyFile string
	// EtcdUsername and EtcdPassword log in to an etcd with authentication
	// enabled; both or neither. The password is never logged.
	EtcdUsername, EtcdPassword string
	// EtcdPrefix is the key prefix in etcd; default "/trellis".
	EtcdPrefix string
	// TrustDomain of the mesh; default trellis.local. Fixed once a CA exists.
	TrustDomain string
	// CACertFile and CAKeyFile import a CA (root or intermediate); both or
	// neither.
	CACertFile, CAKeyFile string
	// StoreSecretFile holds the store secret (mode 0600), which seals
	// the CA key kept in the store: every server on one store needs the
	// same. StoreSecret is the secret itself (the CLI reads it from
	// $TRELLIS_STORE_SECRET). Give at most one; with neither, the data
	// dir's store-secret file is used, made on a store without a CA.
	StoreSecretFile, StoreSecret string
	// AdminTokenFile holds an admin token to accept, instead of generating one.
	AdminTokenFile string
	// SVIDTTL is the lifetime of workload certificates; default 24h.
	SVIDTTL time.Duration
	// LeaseTTL bounds how long a stopped server's own records (its peer
	// record, a singleton job's lock) outlive it; default 10s.
	LeaseTTL time.Duration
	// RegistrationGrace is how long an instance outlives the server that
	// held its proxy's stream (a crash, a partition), for the proxy to
	// reconnect to a server that takes its registration over; default
	// 30s, at least 1s. A proxy that ends its stream, or whose connection
	// its server declares dead, is deregistered at once.
	RegistrationGrace time.Duration
	// WarmUp is how long after its start a server keeps the instances
	// last registered that have not re-registered yet in snapshots, so
	// that a control plane restarted after an outage does not drop the
	// endpoints of proxies that have not reconnected (warmup.go); default
	// 30s, at most 10m.
	WarmUp time.Duration
	// StatusInterval is how often, at most, a proxy's status is written to
	// the store when only its versions change; default 5s, 10ms to 1m.
	StatusInterval time.Duration
	// AdvertiseNames are extra DNS names or IPs for the serving certificate.
	AdvertiseNames []string
	// DNSListen, when set, serves the mesh's names over DNS (UDP and TCP)
	// for callers outside the mesh, such as 127.0.0.1:15053; off when
	// empty.
	DNSListen string
	// DNSRate is the DNS queries a second each client may ask (default
	// meshdns.DefaultRate; negative: no limit).
	DNSRate float64
	// StatsInterval is the width of the intervals the server sums the
	// proxies' traffic summaries into (it keeps 15 minutes of them);
	// default 5s, 1s to 1m. Proxies should send at the same interval.
	StatsInterval time.Duration
	// AdvertiseAddress is where the other servers of an HA setup reach
	// this one's API (host:port) to push it their proxies' traffic
	// summaries; default the listen address, or, when that is a
	// wildcard, the first of AdvertiseNames (else the host name) with
	// the listen port.
	AdvertiseAddress string
	// MaxStreamAge is how long a proxy stream lasts before the server
	// ends it, give or take 10%, for the proxy to reconnect to a random
	// server: how proxies spread onto a server that joined. Default
	// DefaultMaxStreamAge (30m); at least 1s.
	MaxStreamAge time.Duration
	// MaxRegistering is how many proxy streams register in the store at
	// once; the others wait their turn, holding their streams, so that
	// thousands of proxies connecting together do not overload the store
	// (admission.go). Default DefaultMaxRegistering (32).
	MaxRegistering int
	// WriteTimeout bounds each API write, answered as applied, not
	// applied or of unknown outcome within it (see write.go); default 5s,
	// at least 1s.
	WriteTimeout time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
	// Registry for metrics; nil makes a private one.
	Registry *prometheus.Registry
	// Out is where a newly made admin token is shown once; nil is os.Stdout.
	Out io.Writer
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data dir: required"))
	}
	if c.TrustDomain != "" {
		if err := identity.ValidateTrustDomain(c.TrustDomain); err != nil {
			errs = append(errs, fmt.Errorf("trust domain: %w", err))
		}
	}
	if (c.CACertFile == "") != (c.CAKeyFile == "") {
		errs = append(errs, errors.New("ca cert and ca key: give both or neither"))
	}
	if c.StoreSecretFile != "" && c.StoreSecret != "" {
		errs = append(errs, errors.New("store secret: both a file and the value are set; give one"))
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			errs = append(errs, fmt.Errorf("listen %q: %w", c.Listen, err))
		}
	}
	if c.DNSListen != "" {
		if _, _, err := net.SplitHostPort(c.DNSListen); err != nil {
			errs = append(errs, fmt.Errorf("dns listen %q: %w", c.DNSListen, err))
		}
	}
	errs = append(errs, c.validateEtcd()...)
	if c.SVIDTTL < 0 || c.SVIDTTL > 0 && c.SVIDTTL < 10*time.Second {
		errs = append(errs, fmt.Errorf("svid ttl %v: must be at least 10s", c.SVIDTTL))
	}
	if c.LeaseTTL < 0 || c.LeaseTTL > 0 && c.LeaseTTL < time.Second {
		errs = append(errs, fmt.Errorf("lease ttl %v: must be at least 1s", c.LeaseTTL))
	}
	if c.RegistrationGrace < 0 || c.RegistrationGrace > 0 && c.RegistrationGrace < time.Second {
		errs = append(errs, fmt.Errorf("registration grace %v: must be at least 1s", c.RegistrationGrace))
	}
	if c.WarmUp < 0 || c.WarmUp > 10*time.Minute {
		errs = append(errs, fmt.Errorf("warm-up %v: must be between 0 (the default) and 10m", c.WarmUp))
	}
	if c.StatusInterval < 0 || c.StatusInterval > 0 && (c.StatusInterval < 10*time.Millisecond || c.StatusInterval > time.Minute) {
		errs = append(errs, fmt.Errorf("status interval %v: must be between 10ms and 1m", c.StatusInterval))
	}
	if c.AdvertiseAddress != "" {
		if _, _, err := net.SplitHostPort(c.AdvertiseAddress); err != nil {
			errs = append(errs, fmt.Errorf("advertise address %q: %w", c.AdvertiseAddress, err))
		}
	}
	if c.MaxStreamAge < 0 || c.MaxStreamAge > 0 && c.MaxStreamAge < time.Second {
		errs = append(errs, fmt.Errorf("max stream age %v: must be at least 1s", c.MaxStreamAge))
	}
	if c.WriteTimeout < 0 || c.WriteTimeout > 0 && c.WriteTimeout < time.Second {
		errs = append(errs, fmt.Errorf("write timeout %v: must be at least 1s", c.WriteTimeout))
	}
	if c.MaxRegistering < 0 {
		errs = append(errs, fmt.Errorf("max registering %d: must not be negative", c.MaxRegistering))
	}
	if c.StatsInterval != 0 && (c.StatsInterval < time.Second || c.StatsInterval > time.Minute) {
		errs = append(errs, fmt.Errorf("stats interval %v: must be between 1s and 1m", c.StatsInterval))
	}
	return errors.Join(errs...)
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.TrustDomain == "" {
		c.TrustDomain = DefaultTrustDomain
	}
	if c.SVIDTTL == 0 {
		c.SVIDTTL = ca.DefaultSVIDTTL
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.MaxStreamAge == 0 {
		c.MaxStreamAge = DefaultMaxStreamAge
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.RegistrationGrace == 0 {
		c.RegistrationGrace = DefaultRegistrationGrace
	}
	if c.WarmUp == 0 {
		c.WarmUp = DefaultWarmUp
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = DefaultStatusInterval
	}
	if c.MaxRegistering == 0 {
		c.MaxRegistering = DefaultMaxRegistering
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
}

type serverMetrics struct {
	proxies prometheus.Gauge
	pushes  prometheus.Counter
	svids   prometheus.Counter
	api     *prometheus.CounterVec
}

func newServerMetrics(reg prometheus.Registerer) *serverMetrics {
	m := &serverMetrics{
		proxies: prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_control_proxies_connected", Help: "Proxies with an open stream to this server."}),
		pushes:  prometheus.NewCounter(prometheus.CounterOpts{Name: "trellis_control_snapshots_pushed_total", Help: "Snapshots sent to proxies."}),
		svids:   prometheus.NewCounter(prometheus.CounterOpts{Name: "trellis_control_svids_issued_total", Help: "Workload certificates signed."}),
		api:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_control_api_requests_total", Help: "API requests by status code."}, []string{"code"}),
	}
	reg.MustRegister(m.proxies, m.pushes, m.svids, m.api)
	return m
}

// Server is a running control plane.
type Server struct {
	cfg    Config
	log    *slog.Logger
	store  store.Store
	issuer atomic.Pointer[ca.CA] // swapped when the shared CA changes
	// sealer seals and opens the CA keys in the store with the store
	// secret; set in Run before anything reads it.
	sealer         *ca.Sealer
	serving        atomic.Pointer[tls.Certificate]
	reissue        chan struct{} // the serving certificate is to be renewed now
	state          *state
	metrics        *serverMetrics
	metricsHandler http.Handler
	stopping       atomic.Bool
	ready          chan struct{}
	addr           atomic.Pointer[string]

	// movers says when proxy streams must leave this server (failover.go).
	movers *movers
	// storeLookups bounds the store reads for tokens the mirror lacks.
	storeLookups *rate.Limiter
	// refusals bounds the lines logged for refused calls and streams.
	refusals ratelog.Limit
	// flusher writes the proxies' status at a bounded rate (statusflush.go).
	flusher *statusFlusher
	// admission lets a few proxy streams register at a time (admission.go).
	admission *admission
	// dash holds the dashboard's sessions (session.go).
	dash *sessions
	// stats holds the proxies' traffic summaries (stats.go).
	stats  *stats.Ring
	statsm *statsMetrics
	// snaps shares computed snapshots between the streams of one view
	// (snapcache.go).
	snaps *snapCache
	// id names this server to its peers, a new one each start; peerm
	// counts the pushes between servers (peer.go).
	id    string
	peerm *peerMetrics

	// writes holds what API writes share (write.go).
	writes writes

	usedMu     sync.Mutex
	usedWrites map[string]time.Time // token hash -> last-used write

	// bg holds the goroutines Run started (goBackground); bgCtx ends
	// with Run, which waits for them before closing the store. Once
	// bgStopped, nothing new starts: a request handler still running
	// after the listener closed must not Add to bg while Run Waits.
	bg        sync.WaitGroup
	bgCtx     context.Context
	bgMu      sync.Mutex
	bgStopped bool
	// handlers are the API's and the proxy streams' handlers running, and
	// the goroutines a stream starts (goStream); Run waits for them
	// after its server has closed. Added under bgMu until handlersDone.
	handlers     sync.WaitGroup
	handlersDone bool
}

// handlerStarts counts a handler (or a stream's goroutine) in, unless Run
// is past waiting for them; then the caller must not run.
func (s *Server) handlerStarts() bool {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.handlersDone {
		return false
	}
	s.handlers.Add(1)
	return true
}

// waitHandlers refuses handlers from now on and waits for those running.
func (s *Server) waitHandlers() {
	s.bgMu.Lock()
	s.handlersDone = true
	s.bgMu.Unlock()
	s.handlers.Wait()
}

// goStream runs f as a goroutine of a proxy stream, owned by Run. Only a
// handler calls it, while counted itself: the count is above zero, so the
// Add may come while Run waits.
func (s *Server) goStream(f func()) {
	s.handlers.Add(1)
	go func() {
		defer s.handlers.Done()
		f()
	}()
}

// goBackground runs f as one of Run's goroutines, unless Run is ending.
func (s *Server) goBackground(f func()) {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.bgStopped {
		return
	}
	s.bg.Go(f)
}

// stopBackground ends and waits for Run's goroutines.
func (s *Server) stopBackground(cancel context.CancelFunc) {
	s.bgMu.Lock()
	s.bgStopped = true
	s.bgMu.Unlock()
	cancel()
	s.bg.Wait()
}

// New checks cfg and returns a server ready to Run.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	log := cfg.Logger.With("component", "control")
	ring := stats.NewRing(stats.RingConfig{Interval: cfg.StatsInterval})
	return &Server{
		stats:          ring,
		statsm:         newStatsMetrics(cfg.Registry, ring),
		snaps:          newSnapCache(cfg.Registry),
		id:             newServerID(),
		peerm:          newPeerMetrics(cfg.Registry),
		cfg:            cfg,
		log:            log,
		state:          newState(log),
		metrics:        newServerMetrics(cfg.Registry),
		metricsHandler: promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}),
		ready:          make(chan struct{}),
		usedWrites:     map[string]time.Time{},
		storeLookups:   rate.NewLimiter(50, 50),
		reissue:        make(chan struct{}, 1),
		dash:           newSessions(),
		movers:         newMovers(),
		flusher:        newStatusFlusher(cfg.StatusInterval),
		admission:      newAdmission(cfg.MaxRegistering, cfg.Registry),
	}, nil
}

// Ready is closed once the server accepts requests.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the address the server listens on, once Ready.
func (s *Server) Addr() string {
	if p := s.addr.Load(); p != nil {
		return *p
	}
	return ""
}

// Run serves until ctx ends, then stops and releases the store.
func (s *Server) Run(ctx context.Context) error {
	if was, err := store.PrivateDir(s.cfg.DataDir); err != nil {
		return err
	} else if was != 0 {
		s.log.Warn("data dir was open to other users; made it 0700", "dir", s.cfg.DataDir, "mode", fmt.Sprintf("%04o", was))
	}
	etcdCfg, err := s.etcdConfig()
	if err != nil {
		return err
	}
	if len(etcdCfg.Endpoints) == 0 {
		emb, err := store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: s.cfg.DataDir, OnRefused: s.storeRefused()})
		if err != nil {
			return err
		}
		defer emb.Close()
		etcdCfg = emb.Config()
		s.log.Info("embedded etcd started", "dir", filepath.Join(s.cfg.DataDir, "etcd"), "endpoint", etcdCfg.Endpoints[0])
	}
	etcdCfg.Prefix = s.cfg.EtcdPrefix
	st, err := store.NewEtcd(ctx, etcdCfg)
	if err != nil {
		return err
	}
	defer st.Close()
	s.store = &liveStore{Store: st} // failover.go
	// What runs in the background (the store's mirror, certificate
	// renewal, following a rotation, a token's last-use write) is
	// stopped and waited for before the store closes.
	bgCtx, stopBg := context.WithCancel(ctx)
	s.bgCtx = bgCtx
	defer s.stopBackground(stopBg)

	c, err := s.sharedCA(ctx)
	if err != nil {
		return err
	}
	s.issuer.Store(c)
	if err := s.writeRootsFile(c); err != nil {
		return fmt.Errorf("save the CA's roots in the data dir: %w", err)
	}
	if err := publishBundle(ctx, st, c); err != nil {
		return fmt.Errorf("publish trust bundle: %w", err)
	}
	s.state.setWarm(true)
	s.goBackground(func() { s.state.run(bgCtx, st) })
	s.goBackground(func() { s.state.probe(bgCtx, st) })
	select {
	case <-s.state.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.goBackground(func() { s.runWarmUp(bgCtx) })
	s.goBackground(func() { s.flusher.run(bgCtx) })
	s.goBackground(func() { s.refreshViews(bgCtx) })
	if err := s.bootstrapAdmin(ctx); err != nil {
		return fmt.Errorf("admin token: %w", err)
	}

	cert, err := s.servingCert(s.signer())
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	s.serving.Store(cert)
	s.goBackground(func() { s.watchStore(bgCtx) })
	s.goBackground(func() { s.renewServing(bgCtx) })
	s.goBackground(func() { s.followSigner(bgCtx) })
	s.goBackground(func() { s.runCanaries(bgCtx) })

	if s.cfg.DNSListen != "" {
		if err := s.serveDNS(bgCtx); err != nil {
			return err
		}
	}

	// Proxies hold one long stream each. A proxy that froze or was cut off
	// without its socket closing keeps its lease alive through this server
	// until the connection is declared dead: ping after 3 s of silence and
	// give up 3 s later, so that its instance leaves within 10 s. A ping is
	// a few bytes, cheap even for thousands of proxies.
	const pingAfter, pingTimeout = 3 * time.Second, 3 * time.Second
	gs := grpc.NewServer(
		grpc.Creds(handshaken{}),
		grpc.ForceServerCodecV2(xds.Codec{}), // shared encoded pushes (xds.Encoded)
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: pingAfter, Timeout: pingTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: xds.ClientPingInterval / 2, PermitWithoutStream: true}),
		// A proxy sends small requests (acknowledgements) and receives
		// snapshots. No read buffer of gRPC's own: TLS holds one
		// already. A write buffer shared between connections, not held
		// by each between pushes.
		grpc.ReadBufferSize(0),
		grpc.SharedWriteBuffer(true),
		// Bounds for a client not yet authenticated (the token is checked
		// in the RPC): net/http's bounds, or tighter. A proxy's header
		// block is a token and a few fields.
		grpc.MaxConcurrentStreams(250),
		grpc.MaxHeaderListSize(64<<10),
		// Fixed flow-control windows: gRPC returns a connection's credit
		// as data arrives, not as the handler reads it, so unread data is
		// bounded by the windows; the adaptive ones grow to 16 MiB a
		// stream. A proxy sends acknowledgements and summaries.
		grpc.InitialWindowSize(64<<10),
		grpc.InitialConnWindowSize(1<<20),
		grpc.ConnectionTimeout(handshakeTimeout),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			// Counted so that Run waits for it, as the HTTP handlers.
			if !s.handlerStarts() {
				return status.Error(codes.Unavailable, "control plane stopping")
			}
			defer s.handlers.Done()
			return handler(srv, ss)
		}),
	)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, &adsServer{s: s})
	api := s.routes()
	tlsCfg := certs.EdgeServerConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return s.serving.Load(), nil
	}, nil, xds.ALPN, "h2", "http/1.1")
	peerTLS(tlsCfg)
	hs := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Counted so that Run waits for it: Close cuts connections
			// but returns while their handlers still run.
			if !s.handlerStarts() {
				http.Error(w, "control plane stopping", http.StatusServiceUnavailable)
				return
			}
			defer s.handlers.Done()
			if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
				gs.ServeHTTP(w, r) // a proxy that does not offer xds.ALPN
				return
			}
			api.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// TLS 1.2 with forward-secret AEAD suites only, or 1.3, as the
		// edge listeners: no CBC or static-RSA suite reaches the API.
		// Peer servers, and only they, are asked for a certificate.
		// splitListener does the handshake with this configuration.
		TLSConfig: tlsCfg,
	}
	if err := http2.ConfigureServer(hs, &http2.Server{ReadIdleTimeout: pingAfter, PingTimeout: pingTimeout}); err != nil {
		return err
	}
	l, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	addr := l.Addr().String()
	s.addr.Store(&addr)
	// Running out of descriptors is retried with backoff and logged at
	// warn (net/http's own retry lines go to ErrorLog, at debug).
	split := newSplitListener((&netconn.Acceptor{Name: "api", Logger: s.log}).Listener(l), tlsCfg, s.log)
	// The serving goroutines are Run's: every way out below waits for
	// them, and for the handlers still running (http.Server.Close does
	// not).
	var serving sync.WaitGroup
	errc := make(chan error, 3)
	serving.Go(func() { errc <- split.run() })
	serving.Go(func() { errc <- hs.Serve(split.http) })
	serving.Go(func() { errc <- gs.Serve(split.grpc) })
	s.log.Info("control plane serving", "addr", addr, "trustDomain", s.signer().TrustDomain())
	close(s.ready)
	s.goBackground(func() { s.runPeering(bgCtx) })

	var serveErr error
	select {
	case serveErr = <-errc:
	case <-ctx.Done():
	}
	s.stopping.Store(true)
	// Proxy streams end now, each with a status that sends its proxy to
	// another server at once; then the listener closes (GOAWAY).
	s.movers.set(func() { s.movers.stopping = true })
	split.close()
	shutCtx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	stopped := make(chan struct{})
	go func() { // ends when GracefulStop does, at the latest after Stop below
		gs.GracefulStop()
		close(stopped)
	}()
	if err := hs.Shutdown(shutCtx); err != nil {
		hs.Close() // proxy streams never go idle; cut them after the grace period
	}
	select {
	case <-stopped:
	case <-shutCtx.Done():
		gs.Stop()
		<-stopped
	}
	serving.Wait()
	s.waitHandlers()
	if serveErr != nil {
		return fmt.Errorf("serve: %w", serveErr)
	}
	s.log.Info("control plane stopped")
	return nil
}

// signer returns the CA that signs now.
func (s *Server) signer() *ca.CA { return s.issuer.Load() }

// renewServing renews the API's certificate at half-life, and at once when
// the issuer changed.
func (s *Server) renewServing(ctx context.Context) {
	for {
		leaf := s.serving.Load().Leaf
		wait := time.NewTimer(time.Until(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)))
		select {
		case <-ctx.Done():
			wait.Stop()
			return
		case <-wait.C:
		case <-s.reissue:
			wait.Stop()
		}
		c, err := s.servingCert(s.signer())
		if err != nil {
			s.log.Error("renew serving certificate", "err", err)
			sleep(ctx, time.Minute)
			continue
		}
		s.serving.Store(c)
	}
}

// bootstrapAdmin makes sure an admin token exists: the configured file's, the
// one saved in the data dir, or a new one made by the first server to start
// (shown once and saved 0600).
func (s *Server) bootstrapAdmin(ctx context.Context) error {
	file := s.cfg.AdminTokenFile
	if file == "" {
		file = filepath.Join(s.cfg.DataDir, AdminTokenFileName)
	}
	if b, err := os.ReadFile(file); err == nil {
		certs.WarnIfShared(s.log, "admin token file", file)
		secret := strings.TrimSpace(string(b))
		if !strings.HasPrefix(secret, tokenPrefix) || len(secret) < len(tokenPrefix)+16 || len(secret) > len(tokenPrefix)+128 {
			return fmt.Errorf("%s: not a trellis token (want %s followed by 16 to 128 characters)", file, tokenPrefix)
		}
		err := storeTokenHash(ctx, s.store, secret, v1.Token{Admin: true, Description: "admin (from " + filepath.Base(file) + ")"})
		if errors.Is(err, errTokenRevoked) {
			// Not fatal: the other admin tokens still work. The file's
			// token stays refused.
			s.log.Warn("the admin token in this file was deleted; it is not accepted again (put a new token there, or remove the file)", "file", file)
			return nil
		}
		return err
	} else if s.cfg.AdminTokenFile != "" {
		return fmt.Errorf("read admin token file: %w", err)
	}
	err := s.store.Create(ctx, keyBootstrap, []byte(time.Now().UTC().Format(time.RFC3339)))
	if errors.Is(err, store.ErrExists) {
		s.log.Info("admin token was made earlier or by another server; not making one")
		return nil
	}
	if err != nil {
		return err
	}
	secret, _, err := createToken(ctx, s.store.Commit, v1.Token{Admin: true, Description: "bootstrap admin"})
	if err != nil {
		return err
	}
	if err := markFileToken(ctx, s.store, secret); err != nil {
		return err
	}
	if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("save admin token: %w", err)
	}
	fmt.Fprintf(s.cfg.Out, "Admin token (shown once, saved to %s):\n  %s\n", file, secret)
	return nil
}
