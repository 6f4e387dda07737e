package sidecar

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/identity"
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
	// Network names the instance's network.
	Network string `yaml:"network"`
	// Upstreams are the local listeners.
	Upstreams []Upstream `yaml:"upstreams"`
	// Server is the control plane's host:port.
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
	// 127.0.0.1:0.
	AdminAddr string `yaml:"adminAddr"`
	// HealthHTTPPath, when set, checks the app with HTTP GET; else TCP.
	HealthHTTPPath string `yaml:"healthHTTPPath"`
	// HealthInterval between app checks; default 1s.
	HealthInterval time.Duration `yaml:"healthInterval"`
	// DrainTimeout bounds waiting for open connections at shutdown;
	// default 15s.
	DrainTimeout time.Duration `yaml:"drainTimeout"`

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
	if err := validHostPort(c.AppAddr, false); err != nil {
		errs = append(errs, fmt.Errorf("app address: %w", err))
	}
	if c.PublicAddr != "" {
		if err := validHostPort(c.PublicAddr, true); err != nil {
			errs = append(errs, fmt.Errorf("public address: %w", err))
		}
	}
	if c.AdvertiseAddr != "" && net.ParseIP(c.AdvertiseAddr) == nil {
		errs = append(errs, fmt.Errorf("advertise address %q: not an IP", c.AdvertiseAddr))
	}
	if c.Server == "" {
		errs = append(errs, errors.New("server: required (host:port of trellis server)"))
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
	if c.HealthHTTPPath != "" && !strings.HasPrefix(c.HealthHTTPPath, "/") {
		errs = append(errs, fmt.Errorf("health path %q: must start with /", c.HealthHTTPPath))
	}
	if c.DrainTimeout < 0 || c.HealthInterval < 0 {
		errs = append(errs, errors.New("durations must not be negative"))
	}
	return errors.Join(errs...)
}

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
