package sidecar

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/proxy/l7"
	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
)

// Limits bound the connections a proxy takes on (the README's Limits
// table). Zero values mean the defaults; -1 turns a limit off.
type Limits struct {
	// MaxConnectionsPerListener bounds the connections open at once on
	// each listener (public, edge, each upstream, each gateway port...);
	// one over it is closed at once and counted. Default 10,000
	// (netconn.DefaultMaxConnections).
	MaxConnectionsPerListener int `yaml:"maxConnectionsPerListener"`
	// MaxConnections bounds the connections open at once across every
	// listener of the process. Default: half of RLIMIT_NOFILE less a
	// reserve (netconn.ProcessMaxConnections), since a proxied connection
	// usually holds a second descriptor upstream.
	MaxConnections int `yaml:"maxConnections"`
	// FDHighWater is the number of descriptors in use at which new
	// connections are refused, before the process runs out of them.
	// Default 90 % of RLIMIT_NOFILE (netconn.FDHighWater).
	FDHighWater int `yaml:"fdHighWater"`

	// HeaderReadTimeout bounds the wait for a client's request head (30
	// s); BodyReadTimeout each read of its body (30 s, then 408);
	// IdleTimeout a kept client connection with no request (5 min).
	HeaderReadTimeout time.Duration `yaml:"headerReadTimeout"`
	BodyReadTimeout   time.Duration `yaml:"bodyReadTimeout"`
	IdleTimeout       time.Duration `yaml:"idleTimeout"`
	// StreamIdleTimeout resets an HTTP/2 request stream, a client's or
	// one between sidecars, on which nothing moves (5 min).
	StreamIdleTimeout time.Duration `yaml:"streamIdleTimeout"`
	// MaxConcurrentStreams bounds the streams one HTTP/2 client
	// connection has open at once (100).
	MaxConcurrentStreams uint32 `yaml:"maxConcurrentStreams"`
	// StreamBuffer is the most one HTTP/2 stream may hold unread, its
	// largest receive window (1 MiB); a stream starts at 64 KiB and grows
	// towards it while its reader keeps up.
	StreamBuffer uint32 `yaml:"streamBuffer"`
}

// http applies the HTTP limits to a server of clients.
func (l Limits) http(s *l7.Server) {
	s.HeaderReadTimeout, s.BodyReadTimeout, s.IdleTimeout = l.HeaderReadTimeout, l.BodyReadTimeout, l.IdleTimeout
	s.H2 = l.tunnel(s.H2)
	s.H2.MaxStreams = l.MaxConcurrentStreams
	s.H2.IdleTimeout = l.IdleTimeout
}

// tunnel applies the stream limits to a tunnel configuration.
func (l Limits) tunnel(c tunnel.Config) tunnel.Config {
	c.StreamIdleTimeout = l.StreamIdleTimeout
	c.StreamWindow = l.StreamBuffer
	return c
}

func (l Limits) validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int
	}{
		{"limits.maxConnectionsPerListener", l.MaxConnectionsPerListener},
		{"limits.maxConnections", l.MaxConnections},
		{"limits.fdHighWater", l.FDHighWater},
	} {
		if f.v < -1 {
			errs = append(errs, fmt.Errorf("%s: %d: want a count, 0 for the default or -1 for none", f.name, f.v))
		}
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"limits.headerReadTimeout", l.HeaderReadTimeout},
		{"limits.bodyReadTimeout", l.BodyReadTimeout},
		{"limits.idleTimeout", l.IdleTimeout},
		{"limits.streamIdleTimeout", l.StreamIdleTimeout},
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %s: want a duration, 0 for the default", f.name, f.v))
		}
	}
	if b := l.StreamBuffer; b != 0 && (b < 64<<10 || b > 1<<31-1) {
		errs = append(errs, fmt.Errorf("limits.streamBuffer: %d: want 65536 to 2147483647 bytes, 0 for the default", b))
	}
	if n := l.MaxConcurrentStreams; n > 1<<20 {
		errs = append(errs, fmt.Errorf("limits.maxConcurrentStreams: %d: want at most 1048576, 0 for the default", n))
	}
	return errors.Join(errs...)
}

// listenerMetrics count what the accept loops of every listener see
// (netconn.Counters).
type listenerMetrics struct {
	acceptErrors *prometheus.CounterVec
	refused      *prometheus.CounterVec
}

var _ netconn.Counters = (*listenerMetrics)(nil)

func newListenerMetrics(reg prometheus.Registerer, adm *netconn.Admission) *listenerMetrics {
	m := &listenerMetrics{
		acceptErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_listener_accept_errors_total",
			Help: "Failed accepts that the listener retried with backoff, by listener and reason (emfile, enfile, enobufs, econnaborted, ...).",
		}, []string{"listener", "reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_connections_refused_total",
			Help: "Connections closed as soon as accepted because a limit was reached, by listener and reason (listener_limit, process_limit, fd_high_water).",
		}, []string{"listener", "reason"}),
	}
	open := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "trellis_connections_open",
		Help: "Connections accepted by every listener of the process and still being served.",
	}, func() float64 { return float64(adm.Open()) })
	maxConns, high := adm.Limits()
	limits := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "trellis_connections_limit",
		Help: "The process's limits in force, by kind (max_connections, fd_high_water); 0 means none.",
	}, []string{"kind"})
	limits.WithLabelValues("max_connections").Set(float64(maxConns))
	limits.WithLabelValues("fd_high_water").Set(float64(high))
	reg.MustRegister(m.acceptErrors, m.refused, open, limits)
	return m
}

func (m *listenerMetrics) AcceptError(listener, reason string) {
	m.acceptErrors.WithLabelValues(listener, reason).Inc()
}

func (m *listenerMetrics) Refused(listener, reason string) {
	m.refused.WithLabelValues(listener, reason).Inc()
}

// acceptor returns the accept loop settings of the listener name.
func (p *Proxy) acceptor(name string) *netconn.Acceptor {
	return &netconn.Acceptor{
		Name:           name,
		MaxConnections: p.cfg.Limits.MaxConnectionsPerListener,
		Admission:      p.admission,
		Logger:         p.log,
		Counters:       p.listenerm,
	}
}

// listenerHealth records listeners that failed for good (not closed by
// the proxy), for /ready and for Run.
type listenerHealth struct {
	mu     sync.Mutex
	down   map[string]error
	failed chan error // the first failure, for Run; one slot
}

func newListenerHealth() *listenerHealth {
	return &listenerHealth{down: map[string]error{}, failed: make(chan error, 1)}
}

// done takes the result of serving listener name: nil (or a server's
// closed error) when the proxy closed it; anything else marks it down.
func (h *listenerHealth) done(name string, err error) {
	if err == nil || errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return
	}
	h.mu.Lock()
	h.down[name] = err
	h.mu.Unlock()
	select {
	case h.failed <- fmt.Errorf("%s listener failed: %w", name, err):
	default:
	}
}

// notReady describes the listeners that are down, or returns "".
func (h *listenerHealth) notReady() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.down) == 0 {
		return ""
	}
	var parts []string
	for name, err := range h.down {
		parts = append(parts, name+": "+err.Error())
	}
	sort.Strings(parts)
	return "listener down: " + strings.Join(parts, "; ")
}
