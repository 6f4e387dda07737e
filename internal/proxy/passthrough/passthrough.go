// Package passthrough is TLS pass-through load balancing, as a network load
// balancer does it: it reads the ClientHello's server name (SNI) without
// answering it, picks a healthy target of the service that name maps to,
// and forwards the untouched bytes, the ClientHello first. It holds no key
// and never decrypts. Targets are health-checked here as well as by their
// own sidecars; a target that leaves keeps its open connections until they
// end or its drain timeout passes.
package passthrough

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/netconn"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/trellis-mesh/trellis/internal/proxy/l4"
)

// Target is one instance that terminates TLS for a service.
type Target struct {
	Addr     string // host:port of its edge listener
	Instance string
}

// Config is a listener's current configuration, read per connection.
type Config struct {
	// Service maps a server name ("" when the ClientHello has none) to a
	// service; ok false refuses the connection.
	Service func(sni string) (service string, ok bool)
	// Services are all the services Service may return, so that their
	// targets are checked before the first connection.
	Services []string
	// ProxyProtocol sends a PROXY v2 header with the client's address.
	ProxyProtocol bool
	// TLSHealthCheck checks targets with a TLS handshake, not a connect.
	TLSHealthCheck bool
	// DrainTimeout bounds how long connections to a target that left stay
	// open; default 30s.
	DrainTimeout time.Duration
	// Registered trusts the registry's health (the targets' own sidecars
	// check their apps) instead of checking targets here: a network
	// gateway's targets are every instance in its network.
	Registered bool
	// Label, when set, is the service label of the connection and byte
	// counters for a server name, instead of the service it maps to (a
	// network gateway counts by the service the name targets, not by
	// instance).
	Label func(sni string) string
}

// Listener is one pass-through port.
type Listener struct {
	// Config returns the current configuration.
	Config func() Config
	// Targets returns the registered, healthy targets of a service.
	Targets func(service string) []Target
	// HelloTimeout bounds the wait for the ClientHello; default 10s.
	HelloTimeout time.Duration
	// CheckInterval between health checks of a target; default 2s.
	CheckInterval time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
	// Metrics; nil means unregistered ones.
	Metrics *l4.Metrics
	// Acceptor runs Serve's accept loop (the listener's name, limits and
	// counters); nil means one with the default limit that logs on
	// Logger.
	Acceptor *netconn.Acceptor
	// Direction labels the listener's metrics; default "passthrough".
	Direction string

	once sync.Once
	// ctx is every connection's and health check's: it ends when Drain
	// gives up waiting, so that a dial or a check in progress ends then
	// instead of at its own timeout.
	ctx      context.Context
	cancel   context.CancelFunc
	mu       sync.Mutex
	targets  map[string]*target // by address
	clients  map[net.Conn]struct{}
	draining bool
	wg       sync.WaitGroup // the connections' goroutines; Drain waits for them
}

// target is what the listener knows of one address.
type target struct {
	addr    string
	healthy bool // the last health check passed (optimistic at first)
	checked bool
	active  int
	conns   map[net.Conn]struct{}
	gone    time.Time // when it stopped being registered; zero while it is
	service string
	sni     string // a name to check it with
}

func (l *Listener) init() {
	l.once.Do(func() {
		if l.Logger == nil {
			l.Logger = slog.New(slog.DiscardHandler)
		}
		if l.Metrics == nil {
			l.Metrics = l4.NewMetrics(nil)
		}
		if l.HelloTimeout == 0 {
			l.HelloTimeout = 10 * time.Second
		}
		if l.CheckInterval == 0 {
			l.CheckInterval = 2 * time.Second
		}
		if l.Direction == "" {
			l.Direction = "passthrough"
		}
		l.targets = map[string]*target{}
		l.clients = map[net.Conn]struct{}{}
		l.ctx, l.cancel = context.WithCancel(context.Background())
	})
}

// Serve accepts connections on ln until it is closed, and checks targets
// meanwhile; the checks stop before it returns. The connections go on
// until they end or Drain ends them.
func (l *Listener) Serve(ln net.Listener) error {
	l.init()
	ctx, stop := context.WithCancel(l.ctx)
	var checks sync.WaitGroup
	checks.Go(func() { l.maintain(ctx) })
	defer checks.Wait()
	defer stop()
	acc := l.Acceptor
	if acc == nil {
		acc = &netconn.Acceptor{Logger: l.Logger}
	}
	return acc.Serve(ln, func(c net.Conn) {
		l.mu.Lock()
		if l.draining {
			l.mu.Unlock()
			c.Close()
			return
		}
		l.clients[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		defer l.wg.Done()
		l.serve(c)
		l.mu.Lock()
		delete(l.clients, c)
		l.mu.Unlock()
	})
}

func (l *Listener) serve(c net.Conn) {
	defer c.Close()
	l.Metrics.Active.WithLabelValues(l.Direction).Inc()
	defer l.Metrics.Active.WithLabelValues(l.Direction).Dec()
	cfg := l.Config()
	hello, sni, err := readHello(c, l.HelloTimeout)
	if err != nil {
		l.Metrics.Connections.WithLabelValues(l.Direction, "", "error").Inc()
		l.Logger.Info("pass-through: no ClientHello", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	svc, ok := cfg.Service(sni)
	if !ok {
		l.Metrics.Connections.WithLabelValues(l.Direction, "", "denied").Inc()
		l.Logger.Info("pass-through: no target group for the server name", "sni", sni, "remote", c.RemoteAddr().String())
		return
	}
	label := svc
	if cfg.Label != nil {
		label = cfg.Label(sni)
	}
	t, up, err := l.dial(svc, sni)
	if err != nil {
		l.Metrics.Connections.WithLabelValues(l.Direction, label, "error").Inc()
		l.Logger.Warn("pass-through: no target answered", "target", svc, "sni", sni, "err", err)
		return
	}
	defer l.release(t, up)
	if cfg.ProxyProtocol {
		h := proxyproto.HeaderProxyFromAddrs(2, c.RemoteAddr(), c.LocalAddr())
		if _, err := h.WriteTo(up); err != nil {
			return
		}
	}
	if _, err := netconn.Raw(up).Write(hello); err != nil {
		return
	}
	l.Metrics.Connections.WithLabelValues(l.Direction, label, "ok").Inc()
	l.Metrics.Join(l.Direction, label, c, up, 0, int64(len(hello)))
}

// dial connects to the least busy healthy target of svc, trying the others
// if it fails.
func (l *Listener) dial(svc, sni string) (*target, net.Conn, error) {
	regs := l.Targets(svc)
	tried := map[string]bool{}
	var lastErr error = errors.New("no healthy target")
	for range regs {
		t := l.pick(svc, sni, regs, tried)
		if t == nil {
			break
		}
		tried[t.addr] = true
		c, err := netconn.Dialer(5*time.Second).DialContext(l.ctx, "tcp", t.addr)
		if err != nil {
			lastErr = err
			l.mu.Lock()
			t.active--
			t.healthy = false // until the next check says otherwise
			l.mu.Unlock()
			continue
		}
		l.mu.Lock()
		t.conns[c] = struct{}{}
		l.mu.Unlock()
		return t, c, nil
	}
	return nil, nil, lastErr
}

// pick chooses, among regs not yet tried, the healthy target with the
// fewest connections, and counts the new one.
func (l *Listener) pick(svc, sni string, regs []Target, tried map[string]bool) *target {
	l.mu.Lock()
	defer l.mu.Unlock()
	var best *target
	for _, r := range regs {
		t := l.targetLocked(r.Addr, svc, sni)
		if tried[t.addr] || !t.healthy || !t.gone.IsZero() {
			continue
		}
		if best == nil || t.active < best.active {
			best = t
		}
	}
	if best != nil {
		best.active++
	}
	return best
}

func (l *Listener) targetLocked(addr, svc, sni string) *target {
	t := l.targets[addr]
	if t == nil {
		t = &target{addr: addr, healthy: true, conns: map[net.Conn]struct{}{}, service: svc}
		l.targets[addr] = t
	}
	if sni != "" {
		t.sni = sni
	}
	return t
}

func (l *Listener) release(t *target, c net.Conn) {
	c.Close()
	l.mu.Lock()
	t.active--
	delete(t.conns, c)
	l.mu.Unlock()
}

// maintain checks every known target, notes which left the registry, and
// closes their connections when the drain timeout has passed.
func (l *Listener) maintain(ctx context.Context) {
	tick := time.NewTicker(l.CheckInterval)
	defer tick.Stop()
	for {
		l.sweep(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (l *Listener) sweep(ctx context.Context) {
	cfg := l.Config()
	drain := cfg.DrainTimeout
	if drain <= 0 {
		drain = 30 * time.Second
	}
	// Which addresses are registered now.
	registered := map[string]string{}
	for _, svc := range cfg.Services {
		for _, r := range l.Targets(svc) {
			registered[r.Addr] = svc
		}
	}
	now := time.Now()
	type probeOf struct {
		t         *target
		addr, sni string
	}
	var check []probeOf
	l.mu.Lock()
	for addr, svc := range registered {
		l.targetLocked(addr, svc, "")
	}
	for addr, t := range l.targets {
		if _, ok := registered[addr]; ok {
			t.gone = time.Time{}
			check = append(check, probeOf{t, t.addr, t.sni})
			continue
		}
		if t.gone.IsZero() {
			t.gone = now
			l.Logger.Info("pass-through target left; draining", "target", addr, "connections", len(t.conns), "timeout", drain)
		}
		if len(t.conns) == 0 {
			delete(l.targets, addr)
		} else if now.Sub(t.gone) >= drain {
			l.Logger.Info("pass-through drain timeout; closing connections", "target", addr, "connections", len(t.conns))
			for c := range t.conns {
				c.Close()
			}
		}
	}
	l.mu.Unlock()
	for _, pr := range check {
		if cfg.Registered {
			l.mu.Lock()
			pr.t.healthy, pr.t.checked = true, true
			l.mu.Unlock()
			continue
		}
		ok := probe(ctx, pr.addr, pr.sni, cfg.TLSHealthCheck, cfg.ProxyProtocol)
		if ctx.Err() != nil {
			return // stopped, not a failed check
		}
		t := pr.t
		l.mu.Lock()
		if ok != t.healthy || !t.checked {
			if !ok {
				l.Logger.Warn("pass-through target failed its health check", "target", t.addr)
			} else if t.checked {
				l.Logger.Info("pass-through target healthy again", "target", t.addr)
			}
		}
		t.healthy, t.checked = ok, true
		l.mu.Unlock()
	}
}

// probe checks a target: a TCP connect, or with tlsCheck a TLS handshake
// (the target's certificate is not ours to judge, only that it answers),
// within 2s and ctx.
func probe(ctx context.Context, addr, sni string, tlsCheck, proxyProtocol bool) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	if !tlsCheck {
		return true
	}
	if proxyProtocol {
		// A target that takes the PROXY protocol requires its header
		// first; LOCAL says the connection is the gateway's own, as
		// HAProxy's check-send-proxy does.
		h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL}
		deadline, _ := ctx.Deadline()
		c.SetWriteDeadline(deadline)
		if _, err := h.WriteTo(c); err != nil {
			return false
		}
	}
	tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	return tc.HandshakeContext(ctx) == nil
}

// Drain stops accepting and waits for open connections until ctx ends;
// then it closes them, ends their dials and the health checks, and waits
// for their goroutines, which end at once: none is left when it returns.
func (l *Listener) Drain(ctx context.Context) error {
	l.init()
	l.mu.Lock()
	l.draining = true
	l.mu.Unlock()
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	l.cancel()
	l.mu.Lock()
	n := len(l.clients)
	for c := range l.clients {
		c.Close()
	}
	for _, t := range l.targets {
		for c := range t.conns {
			c.Close()
		}
	}
	l.mu.Unlock()
	<-done
	return fmt.Errorf("pass-through drain: closed %d connections: %w", n, ctx.Err())
}
