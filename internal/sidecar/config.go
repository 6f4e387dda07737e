package sidecar

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshdns"
	"github.com/trellis-mesh/trellis/internal/stats"
	"github.com/trellis-mesh/trellis/internal/tracing"
)

// Upstream is one local listener for a destination service.
type Upstream struct {
	// Service is the destination service.
	Service string `yaml:"service"`
	// Listen is the local address, such as 127.0.0.1:9191.
	Listen string `yaml:"listen"`
}

// ParseUpstream parses "service:port" or "service:host:port".
func ParseUpstream(s string) (Upstream, error) {
	svc, addr, ok := strings.Cut(s, ":")
	if !ok {
		return Upstream{}, fmt.Errorf("upstream %q: want SERVICE:PORT", s)
	}
	if !strings.Contains(addr, ":") {
		addr = "127.0.0.1:" + addr
	}
	u := Upstream{Service: svc, Listen: addr}
	return u, u.validate()
}

func (u Upstream) validate() error {
	if err := identity.ValidateServiceName(u.Service); err != nil {
		return fmt.Errorf("upstream %q: %w", u.Service, err)
	}
	if err := validHostPort(u.Listen, false); err != nil {
		return fmt.Errorf("upstream %s: listen: %w", u.Service, err)
	}
	return nil
}

// Edge modes: how the edge listener treats a client's bytes.
const (
	EdgeTerminate   = "terminate"   // TLS ends here; the app gets plain bytes
	EdgePassthrough = "passthrough" // the app terminates TLS itself
)

// Edge certificate sources, for EdgeTerminate.
const (
	EdgeCertFiles      = v1.CertFiles      // CertFile and KeyFile, reloaded on change
	EdgeCertMesh       = v1.CertMesh       // issued and renewed by the mesh CA for DNSNames
	EdgeCertSelfSigned = v1.CertSelfSigned // made at start for DNSNames
)

// Edge is a listener for clients outside the mesh (browsers, load
// balancers, `trellis gateway` in tls-passthrough mode): it terminates TLS
// for them, or passes their bytes through, and forwards to the app.
type Edge struct {
	// Listen is the listener's address, such as 0.0.0.0:8443.
	Listen string `yaml:"listen"`
	// Mode is terminate (default) or passthrough.
	Mode string `yaml:"mode"`
	// CertSource is files, mesh or self-signed; default files when
	// CertFile is set, else self-signed. Mesh certificates carry DNSNames,
	// which the Service resource must allow in spec.dnsNames.
	CertSource string `yaml:"certSource"`
	// CertFile and KeyFile are PEM files (the chain, leaf first, and its key).
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
	// DNSNames name the mesh-issued or self-signed certificate (a
	// self-signed one may name IPs too).
	DNSNames []string `yaml:"dnsNames"`
	// ClientCAFile, when set, requires client certificates that chain to
	// the PEM roots in it.
	ClientCAFile string `yaml:"clientCAFile"`
	// AcceptProxyProtocol requires a PROXY protocol header on every
	// connection, as a gateway or load balancer sends.
	AcceptProxyProtocol bool `yaml:"acceptProxyProtocol"`
	// SendProxyProtocol sends the client's address to the app in a PROXY
	// protocol v2 header.
	SendProxyProtocol bool `yaml:"sendProxyProtocol"`
	// TrustedProxies are the hops in front of the edge listener (CIDRs or
	// addresses, as a Gateway listener's trustedProxies) whose forwarding
	// fields an HTTP service's edge keeps and appends to; default none.
	// With AcceptProxyProtocol the hop is the address the PROXY header
	// names.
	TrustedProxies []string `yaml:"trustedProxies"`
}

// trustedPrefixes returns TrustedProxies parsed (validate refused any
// that does not parse).
func (e *Edge) trustedPrefixes() []netip.Prefix {
	l := v1.GatewayListener{TrustedProxies: e.TrustedProxies}
	return l.TrustedPrefixes()
}

func (e *Edge) certSource() string {
	switch {
	case e.CertSource != "":
		return e.CertSource
	case e.CertFile != "":
		return EdgeCertFiles
	}
	return EdgeCertSelfSigned
}

func (e *Edge) validate() error {
	var errs []error
	if err := validHostPort(e.Listen, true); err != nil {
		errs = append(errs, fmt.Errorf("edge listen: %w", err))
	}
	switch e.Mode {
	case "", EdgeTerminate:
		switch e.certSource() {
		case EdgeCertFiles:
			if e.CertFile == "" || e.KeyFile == "" {
				errs = append(errs, errors.New("edge certificate: files need both a certificate file and a key file"))
			}
		case EdgeCertSelfSigned, EdgeCertMesh:
			if len(e.DNSNames) == 0 {
				errs = append(errs, fmt.Errorf("edge certificate: %s needs a DNS name (--edge-dns-name or TRELLIS_EDGE_DNS_NAME)", e.certSource()))
			}
			for _, n := range e.DNSNames {
				if n == "" || strings.ContainsAny(n, " /:") && net.ParseIP(n) == nil {
					errs = append(errs, fmt.Errorf("edge DNS name %q: not a DNS name or IP", n))
				}
			}
		default:
			errs = append(errs, fmt.Errorf("edge certificate source %q: want %s, %s or %s", e.CertSource, EdgeCertFiles, EdgeCertMesh, EdgeCertSelfSigned))
		}
	case EdgePassthrough:
		if e.CertFile != "" || e.ClientCAFile != "" || len(e.DNSNames) > 0 {
			errs = append(errs, errors.New("edge: passthrough mode holds no certificate; the app terminates TLS"))
		}
	default:
		errs = append(errs, fmt.Errorf("edge mode %q: want %s or %s", e.Mode, EdgeTerminate, EdgePassthrough))
	}
	for i, tp := range e.TrustedProxies {
		if _, err := v1.ParseTrustedProxy(tp); err != nil {
			errs = append(errs, fmt.Errorf("edge trusted proxy %d: %w", i+1, err))
		}
	}
	if len(e.TrustedProxies) > 0 && (e.Mode == EdgePassthrough || e.SendProxyProtocol) {
		errs = append(errs, errors.New("edge trusted proxies: the edge reads no HTTP fields in passthrough mode or when it sends the PROXY protocol to the app"))
	}
	return errors.Join(errs...)
}

// DNS is the proxy's DNS server for its app (see package meshdns): the
// app's upstreams by their mesh names, NXDOMAIN for the mesh names it may
// not call, every other name forwarded to the host's resolver.
type DNS struct {
	// Listen is the UDP and TCP address, such as 127.0.0.1:15053 (or
	// 127.0.0.1:53 when the app's resolv.conf names it directly).
	Listen string `yaml:"listen"`
	// Mode is vip (default: each upstream's virtual IP in
	// 240.240.0.0/16, for transparent mode) or local (the upstream's
	// listener address, where that is a loopback address at the
	// Service's port; no redirect rules needed).
	Mode string `yaml:"mode"`
	// Upstream is the host's resolver, IP or IP:port; default the first
	// nameserver of /etc/resolv.conf, read at start.
	Upstream string `yaml:"upstream"`
}

func (d *DNS) validate() error {
	var errs []error
	if err := validHostPort(d.Listen, false); err != nil {
		errs = append(errs, fmt.Errorf("dns listen: %w", err))
	} else if host, _, _ := net.SplitHostPort(d.Listen); host != "localhost" {
		// The resolver forwards every name outside the mesh to the
		// host's resolver for whoever asks: off loopback that is an open
		// resolver (and a reflector) for the whole network. The app
		// shares the proxy's network namespace (task, pod, host), and
		// the redirect rules send its queries to 127.0.0.1.
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			errs = append(errs, fmt.Errorf("dns listen %q: not a loopback address (127.0.0.1, ::1): off loopback the app's resolver would forward anyone's queries", d.Listen))
		}
	}
	switch d.Mode {
	case "", meshdns.ModeVIP, meshdns.ModeLocal:
	default:
		errs = append(errs, fmt.Errorf("dns mode %q: want %s or %s", d.Mode, meshdns.ModeVIP, meshdns.ModeLocal))
	}
	if d.Upstream != "" && d.Upstream == d.Listen {
		errs = append(errs, fmt.Errorf("dns upstream %s is the proxy's own DNS listener", d.Upstream))
	}
	return errors.Join(errs...)
}

// Tracing configures the proxy's OTLP span export (see package tracing).
type Tracing struct {
	// Endpoint is the collector's URL: grpc://HOST:PORT or grpcs://
	// for OTLP/gRPC, http://HOST:PORT[/PATH] or https:// for OTLP/HTTP
	// (default path /v1/traces), unless Protocol says otherwise.
	Endpoint string `yaml:"endpoint"`
	// Protocol is grpc or http/protobuf; default by the URL's scheme.
	Protocol string `yaml:"protocol"`
	// Sampling is the share, 0 to 1, of the traces this proxy starts
	// that it records; nil means tracing.DefaultSampling (0.01). A
	// request with a traceparent follows its caller's decision.
	Sampling *float64 `yaml:"sampling"`
}

func (t *Tracing) config(c *Config) (tracing.Config, error) {
	e, err := tracing.ParseEndpoint(t.Endpoint, t.Protocol)
	if err != nil {
		return tracing.Config{}, err
	}
	ratio := tracing.DefaultSampling
	if t.Sampling != nil {
		ratio = *t.Sampling
	}
	tc := tracing.Config{Endpoint: e, Sampling: ratio, Service: c.Service, Version: c.Version, Instance: c.Instance}
	if tc.Service == "" {
		tc.Service = "unnamed" // Validate reports the service itself
	}
	return tc, tc.Validate()
}

// Config configures a sidecar. Durations' zero values mean their defaults.
type Config struct {
	// Service is the app's service name.
	Service string `yaml:"service"`
	// Version labels the instance, for routes.
	Version string `yaml:"version"`
	// Instance is the instance ID; default <service>-<random>.
	Instance string `yaml:"instance"`
	// AppAddr is where the app listens, such as 127.0.0.1:8080.
	AppAddr string `yaml:"appAddr"`
	// PublicAddr is the inbound mTLS listener; port 0 picks a free one.
	PublicAddr string `yaml:"publicAddr"`
	// AdvertiseAddr is the IP peers dial; default the PublicAddr IP, or
	// 127.0.0.1 when that is unspecified.
	AdvertiseAddr string `yaml:"advertiseAddr"`
	// Network names the instance's network; default "default". Peers in
	// other networks that declare a network gateway reach it through one.
	Network string `yaml:"network"`
	// Node names the host or task the proxy runs on, shown on the
	// dashboard's Nodes page; default the host name.
	Node string `yaml:"node"`
	// Upstreams are the local listeners.
	Upstreams []Upstream `yaml:"upstreams"`
	// Edge, if set, serves clients outside the mesh.
	Edge *Edge `yaml:"edge"`
	// Transparent, if set, serves traffic redirected to the proxy.
	Transparent *Transparent `yaml:"transparent"`
	// DNS, if set, serves the app's DNS queries.
	DNS *DNS `yaml:"dns"`
	// Gateway, if set, makes this proxy the gateway named Service; it has
	// no app (AppAddr is unused).
	Gateway *Gateway `yaml:"gateway"`
	// Server is the control plane's host:port, or a comma-separated list
	// of them (client.ParseServers); a DNS name stands for all of its
	// addresses. The proxy spreads over them at random and moves to
	// another when its server fails, stops or asks it to.
	Server string `yaml:"server"`
	// ServerCAFile holds the roots that verify the control plane.
	ServerCAFile string `yaml:"serverCAFile"`
	// TokenFile holds the service token.
	TokenFile string `yaml:"tokenFile"`
	// Token is the service token itself (from the environment); TokenFile
	// wins when both are set.
	Token string `yaml:"-"`
	// StateDir persists the last snapshot and certificate; empty disables.
	StateDir string `yaml:"stateDir"`
	// AdminAddr serves /ready, /metrics, /config, /certs; default
	// 127.0.0.1:0 (any free port, as trellis up's sidecars). trellis proxy
	// and trellis gateway default to DefaultAdminPort instead.
	AdminAddr string `yaml:"adminAddr"`
	// HealthHTTPPath, when set, checks the app with HTTP GET; else TCP.
	HealthHTTPPath string `yaml:"healthHTTPPath"`
	// HealthInterval between app checks; default 1s.
	HealthInterval time.Duration `yaml:"healthInterval"`
	// DrainTimeout bounds waiting for open connections at shutdown;
	// default 15s.
	DrainTimeout time.Duration `yaml:"drainTimeout"`
	// Pprof serves the Go profiler under /debug/pprof on the admin
	// listener. Off by default: any local user can reach the admin port,
	// and a profile or trace shows what the proxy holds and costs CPU.
	Pprof bool `yaml:"pprof"`
	// Limits bound the connections the proxy takes on; zero values mean
	// the defaults.
	Limits Limits `yaml:"limits"`

	// StatsInterval is how often the proxy sends the control plane a
	// traffic summary, at multiples of it on the wall clock; default 5s
	// (stats.DefaultInterval), at least 1s. It should match the server's
	// --stats-interval.
	StatsInterval time.Duration `yaml:"statsInterval"`

	// Tracing, if set, exports a span per request and side by OTLP.
	Tracing *Tracing `yaml:"tracing"`

	// Logger; nil discards.
	Logger *slog.Logger `yaml:"-"`
	// Registry for metrics; nil makes a private one.
	Registry *prometheus.Registry `yaml:"-"`
	// OnReady, if set, is called once the proxy serves, with its admin and
	// public addresses.
	OnReady func(admin, public string) `yaml:"-"`
}

// Validate reports every problem at once, naming the flag or field.
func (c *Config) Validate() error {
	var errs []error
	if err := identity.ValidateServiceName(c.Service); err != nil {
		errs = append(errs, fmt.Errorf("service: %w", err))
	}
	if c.Gateway != nil {
		if c.Edge != nil || c.HealthHTTPPath != "" {
			errs = append(errs, errors.New("a gateway has no app: no edge listener or health path"))
		}
		if c.Gateway.ListenIP != "" && net.ParseIP(c.Gateway.ListenIP) == nil {
			errs = append(errs, fmt.Errorf("gateway listen IP %q: not an IP", c.Gateway.ListenIP))
		}
	} else if err := validHostPort(c.AppAddr, false); err != nil {
		errs = append(errs, fmt.Errorf("app address: %w", err))
	}
	if c.PublicAddr != "" {
		if err := validHostPort(c.PublicAddr, true); err != nil {
			errs = append(errs, fmt.Errorf("public address: %w", err))
		}
	}
	if c.Network != "" {
		if err := v1.ValidateNetworkName(c.Network); err != nil {
			errs = append(errs, fmt.Errorf("network: %w", err))
		}
	}
	if c.AdvertiseAddr != "" && net.ParseIP(c.AdvertiseAddr) == nil {
		errs = append(errs, fmt.Errorf("advertise address %q: not an IP", c.AdvertiseAddr))
	}
	if c.Server == "" {
		errs = append(errs, errors.New("server: required (host:port of trellis server)"))
	} else if _, err := client.ParseServers(c.Server); err != nil {
		errs = append(errs, fmt.Errorf("server: %w", err))
	}
	if c.TokenFile == "" && c.Token == "" {
		errs = append(errs, errors.New("token: give a token file (or TRELLIS_TOKEN)"))
	}
	seen := map[string]bool{}
	for _, u := range c.Upstreams {
		if err := u.validate(); err != nil {
			errs = append(errs, err)
		}
		if seen[u.Listen] {
			errs = append(errs, fmt.Errorf("upstream %s: listen address %s used twice", u.Service, u.Listen))
		}
		seen[u.Listen] = true
	}
	if c.Edge != nil {
		if err := c.Edge.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Transparent != nil {
		if c.Gateway != nil {
			errs = append(errs, errors.New("a gateway has no app: no transparent listeners"))
		}
		if err := c.Transparent.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.DNS != nil {
		if c.Gateway != nil {
			errs = append(errs, errors.New("a gateway has no app: no DNS listener"))
		}
		if err := c.DNS.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.HealthHTTPPath != "" && !strings.HasPrefix(c.HealthHTTPPath, "/") {
		errs = append(errs, fmt.Errorf("health path %q: must start with /", c.HealthHTTPPath))
	}
	if c.DrainTimeout < 0 || c.HealthInterval < 0 {
		errs = append(errs, errors.New("durations must not be negative"))
	}
	if err := c.Limits.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.StatsInterval != 0 && (c.StatsInterval < time.Second || c.StatsInterval > 5*time.Minute) {
		errs = append(errs, fmt.Errorf("stats interval %v: must be between 1s and 5m", c.StatsInterval))
	}
	if c.Tracing != nil {
		if _, err := c.Tracing.config(c); err != nil {
			errs = append(errs, err)
		}
	}
	if len(c.Node) > 253 || strings.ContainsFunc(c.Node, func(r rune) bool { return !unicode.IsPrint(r) }) {
		errs = append(errs, fmt.Errorf("node %q: want at most 253 printable characters", c.Node))
	}
	return errors.Join(errs...)
}

// DefaultAdminPort is the admin port of trellis proxy and trellis
// gateway unless told otherwise, and the one trellis ready checks: where
// one proxy per network namespace is the rule (a task, a pod, a host), a
// health check then needs no flag. Envoy's admin port, by custom.
const DefaultAdminPort = 15000

// ErrAdminAddrInUse is Run's error when AdminAddr is taken: most often by
// another proxy in the same network namespace.
var ErrAdminAddrInUse = errors.New("admin address already in use")

func (c *Config) setDefaults() {
	if c.PublicAddr == "" {
		c.PublicAddr = "127.0.0.1:0"
	}
	if c.AdminAddr == "" {
		c.AdminAddr = "127.0.0.1:0"
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 15 * time.Second
	}
	if c.StatsInterval == 0 {
		c.StatsInterval = stats.DefaultInterval
	}
	if c.Network == "" {
		c.Network = v1.DefaultNetwork
	}
	if c.Node == "" {
		c.Node, _ = os.Hostname()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
}

func validHostPort(s string, zeroOK bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return fmt.Errorf("%q: host must be an IP address", s)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 || p == 0 && !zeroOK {
		return fmt.Errorf("%q: bad port", s)
	}
	return nil
}
