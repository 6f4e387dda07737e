package l4

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/netconn"

	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/handshake"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
)

// ALPN is the protocol name on the mTLS link between sidecars.
const ALPN = "trellis/h2"

// openStream is a proxied connection, kept so that a policy change can cut
// the ones it no longer allows.
type openStream struct {
	peer identity.ID
	app  net.Conn
}

// Inbound accepts mTLS connections from other sidecars and forwards every
// authorized CONNECT stream to the local app.
type Inbound struct {
	// TLS is the server configuration; it must verify the peer's SVID.
	TLS *tls.Config
	// Authorize decides per stream, from the peer's verified identity.
	Authorize func(peer identity.ID) authz.Decision
	// AcceptPlain, when set and returning true (the mesh is permissive),
	// lets a connection that does not start a TLS handshake through as
	// plain TCP from an unknown caller; AuthorizePlain decides it.
	AcceptPlain    func() bool
	AuthorizePlain func() authz.Decision
	// HTTPOnly, when set and returning true (the service speaks HTTP:
	// protocol http, http2 or grpc), refuses every CONNECT stream that is
	// neither a request nor a marked upgrade, since its bytes would reach
	// the app past every request check; and it hands plain connections
	// to ServePlainHTTP, or refuses them without one.
	HTTPOnly func() bool
	// ServePlainHTTP serves a plain connection of a permissive mesh to an
	// HTTP service as HTTP requests from an unauthenticated caller, each
	// checked and authorized itself.
	ServePlainHTTP func(c net.Conn)
	// ServeRequest, when set, serves request streams (L7 requests, any
	// method but CONNECT), which it must authorize itself. Peers reach it
	// on the tunnel's protocol or, when the TLS configuration offers it,
	// on plain "h2".
	ServeRequest func(s *tunnel.Stream, peer identity.ID)
	// MaxHeaderBytes bounds a request's header list (16 KiB).
	MaxHeaderBytes uint32
	// Tunnel holds the stream limits of the connections served
	// (StreamIdleTimeout, StreamWindow, ...); zero fields take the
	// tunnel's defaults, and the fields the inbound sets are its own.
	Tunnel tunnel.Config
	// ServeUpgrade, when set, serves streams marked with UpgradeHeader: an
	// HTTP/1.1 request with an Upgrade, read from c, which it must check
	// and authorize itself.
	ServeUpgrade func(c net.Conn, peer identity.ID)
	// Target is the app's address, such as 127.0.0.1:8080.
	Target string
	// DialTimeout bounds dialing the app; zero means 5s.
	DialTimeout time.Duration
	// HalfCloseTimeout bounds how long a connection whose one side has
	// finished waits for the other; zero means DefaultHalfCloseTimeout.
	HalfCloseTimeout time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
	// Metrics; nil means unregistered ones.
	Metrics *Metrics
	// Guard, when set, watches every accepted mTLS connection and retires
	// those whose trust ends.
	Guard *Guard
	// HandshakeLog reports failed handshakes; nil means one on Logger.
	HandshakeLog *handshake.Log
	// Acceptor runs Serve's accept loop (the listener's name, limits and
	// counters); nil means one with the default limit that logs on
	// Logger.
	Acceptor *netconn.Acceptor

	once sync.Once
	// ctx is every connection's: it ends when Drain is over, which ends
	// handshakes and dials to the app still in progress.
	ctx      context.Context
	cancel   context.CancelFunc
	mu       sync.Mutex
	conns    map[*tunnel.Conn]struct{}
	draining bool
	open     map[*openStream]struct{}
	streams  inflight
	// handlers are the accepted connections' goroutines, added under mu
	// while not draining; Drain waits for them.
	handlers sync.WaitGroup
}

func (in *Inbound) init() {
	in.once.Do(func() {
		if in.Logger == nil {
			in.Logger = slog.New(slog.DiscardHandler)
		}
		if in.Metrics == nil {
			in.Metrics = NewMetrics(nil)
		}
		if in.DialTimeout == 0 {
			in.DialTimeout = 5 * time.Second
		}
		if in.HandshakeLog == nil {
			in.HandshakeLog = &handshake.Log{Logger: in.Logger}
		}
		in.conns = map[*tunnel.Conn]struct{}{}
		in.open = map[*openStream]struct{}{}
		in.ctx, in.cancel = context.WithCancel(context.Background())
		if in.Guard != nil && in.TLS != nil && !in.TLS.SessionTicketsDisabled {
			// No resumption under a Guard (see Pool.fullHandshakes): a
			// resumed session would bring back a client chain the Guard
			// cannot judge afresh.
			in.TLS = in.TLS.Clone()
			in.TLS.SessionTicketsDisabled = true
		}
	})
}

// Serve accepts connections on l (a plain TCP listener; TLS is done here)
// until l is closed, through Acceptor.
func (in *Inbound) Serve(l net.Listener) error {
	in.init()
	acc := in.Acceptor
	if acc == nil {
		acc = &netconn.Acceptor{Name: "public", Logger: in.Logger}
	}
	return acc.Serve(l, in.Handle)
}

// Handle serves one accepted connection on the calling goroutine and
// returns when it is done with it: what an Acceptor runs. A connection
// that comes while the inbound drains is closed at once; the others count
// among the handlers Drain waits for.
func (in *Inbound) Handle(c net.Conn) {
	in.init()
	in.mu.Lock()
	if in.draining {
		in.mu.Unlock()
		c.Close()
		return
	}
	in.handlers.Add(1)
	in.mu.Unlock()
	defer in.handlers.Done()
	in.serveConn(c)
}

func (in *Inbound) serveConn(c net.Conn) {
	// A connection still in its handshake when Drain is over is closed
	// with the others.
	stop := context.AfterFunc(in.ctx, func() { c.Close() })
	defer stop()
	if in.AcceptPlain != nil && in.AcceptPlain() {
		pc, tlsNext, err := peekTLS(c)
		if err != nil {
			c.Close()
			return
		}
		c = pc
		if !tlsNext {
			in.servePlain(c)
			return
		}
	}
	cork := tunnel.NewCork(netconn.Raw(c))
	before := in.Guard.Before()
	tc := tls.Server(cork, in.TLS)
	hctx, cancel := context.WithTimeout(in.ctx, 10*time.Second)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		in.Metrics.Handshakes.WithLabelValues("server", "error").Inc()
		if reason := certs.RejectReason(err); reason != "other" {
			in.Metrics.Rejections.WithLabelValues("server", reason).Inc()
			in.HandshakeLog.Log("inbound peer certificate rejected", c, tc, err, slog.String("reason", reason))
		} else {
			in.HandshakeLog.Failed(c, tc, err)
		}
		c.Close()
		return
	}
	cs := tc.ConnectionState()
	result := "ok"
	if cs.DidResume {
		result = "resumed"
	}
	in.Metrics.Handshakes.WithLabelValues("server", result).Inc()
	peer, err := certs.PeerID(cs)
	if err != nil { // VerifyConnection already checked it; be safe anyway
		in.HandshakeLog.Failed(c, tc, fmt.Errorf("peer identity: %w", err))
		c.Close()
		return
	}
	if cs.NegotiatedProtocol != ALPN && !(cs.NegotiatedProtocol == "h2" && in.ServeRequest != nil) {
		in.HandshakeLog.Failed(c, tc, fmt.Errorf("peer did not negotiate %s (ALPN %q)", ALPN, cs.NegotiatedProtocol))
		c.Close()
		return
	}
	cfg := in.Tunnel
	cfg.HalfCloseTimeout, cfg.Cork, cfg.Logger = in.HalfCloseTimeout, cork, in.Logger
	cfg.Requests, cfg.MaxHeaderBytes = in.ServeRequest != nil, in.MaxHeaderBytes
	// A sidecar relays its clients' resets; they are counted where the
	// clients are (Config.PeerIsProxy).
	cfg.PeerIsProxy = cs.NegotiatedProtocol == ALPN
	if cs.NegotiatedProtocol == "h2" {
		// A plain HTTP/2 client (gRPC with an SVID, say), not a sidecar:
		// frames of the protocol's default size, as on every listener
		// for clients; the large ones are for the tunnel's bulk.
		cfg.MaxFrameSize = 16 << 10
	}
	tun := tunnel.NewServer(tc, cfg, func(s *tunnel.Stream) { in.serveStream(peer, s) })
	in.mu.Lock()
	if in.draining {
		in.mu.Unlock()
		tc.Close()
		return
	}
	in.conns[tun] = struct{}{}
	in.mu.Unlock()
	if !in.Guard.Track(tun, "inbound", cs, before) {
		in.mu.Lock()
		delete(in.conns, tun)
		in.mu.Unlock()
		return
	}
	err = tun.Run()
	in.Logger.Debug("inbound tunnel ended", "peer", peer.String(), "err", err)
	in.mu.Lock()
	delete(in.conns, tun)
	in.mu.Unlock()
}

func (in *Inbound) serveStream(peer identity.ID, s *tunnel.Stream) {
	in.streams.add()
	defer in.streams.done()
	if s.Method != "" {
		in.ServeRequest(s, peer)
		return
	}
	if s.Header[UpgradeHeader] != "" && in.ServeUpgrade != nil {
		in.serveUpgrade(peer, s)
		return
	}
	if in.httpOnly() {
		in.Metrics.Connections.WithLabelValues("inbound", peer.Service(), "denied").Inc()
		in.Metrics.Denied.WithLabelValues(peer.Service(), CodeNotRequest).Inc()
		in.Logger.Info("connection denied", "peer", peer.String(), "reason", "a raw stream to an HTTP service", "code", CodeNotRequest)
		s.Refuse(http.StatusBadRequest, "this service speaks HTTP: send requests, not a raw stream")
		return
	}
	if d := in.Authorize(peer); !d.Allow {
		in.Metrics.Connections.WithLabelValues("inbound", peer.Service(), "denied").Inc()
		in.Metrics.Denied.WithLabelValues(peer.Service(), d.Code).Inc()
		in.Logger.Info("connection denied", "peer", peer.String(), "reason", d.Reason, "code", d.Code)
		s.Refuse(http.StatusForbidden, "denied: "+d.Reason)
		return
	}
	app, err := in.dialApp(in.ctx)
	if err != nil {
		in.Metrics.Connections.WithLabelValues("inbound", peer.Service(), "error").Inc()
		in.Logger.Warn("dial app", "target", in.Target, "err", err)
		s.Refuse(http.StatusBadGateway, "app unreachable")
		return
	}
	defer app.Close()
	st := &openStream{peer: peer, app: app}
	in.mu.Lock()
	in.open[st] = struct{}{}
	in.mu.Unlock()
	defer func() {
		in.mu.Lock()
		delete(in.open, st)
		in.mu.Unlock()
	}()
	if err := s.Accept(); err != nil {
		return
	}
	in.Metrics.Connections.WithLabelValues("inbound", peer.Service(), "ok").Inc()
	gauge := in.Metrics.Active.WithLabelValues("inbound")
	gauge.Inc()
	defer gauge.Dec()
	in.Metrics.Splice("inbound", peer.Service(), s, app)
}

// peekTLS reports whether c starts with a TLS handshake record, returning a
// conn that still yields the peeked byte.
func peekTLS(c net.Conn) (net.Conn, bool, error) {
	br := bufio.NewReaderSize(c, 1024)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := br.Peek(1)
	c.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, false, err
	}
	const recordTypeHandshake = 0x16
	return netconn.Peeked(c, br), b[0] == recordTypeHandshake, nil
}

// CodeNotRequest labels streams refused because they carry no request to
// an HTTP service.
const CodeNotRequest = "not_request"

func (in *Inbound) httpOnly() bool { return in.HTTPOnly != nil && in.HTTPOnly() }

// servePlain forwards a plain TCP connection of a permissive mesh; an HTTP
// service's goes to ServePlainHTTP, which checks each request.
func (in *Inbound) servePlain(c net.Conn) {
	if in.httpOnly() {
		if in.ServePlainHTTP == nil {
			in.Metrics.Connections.WithLabelValues("inbound", "", "denied").Inc()
			in.Metrics.Denied.WithLabelValues("", CodeNotRequest).Inc()
			in.Logger.Info("plain connection denied", "remote", c.RemoteAddr().String(), "reason", "no HTTP server for plain callers", "code", CodeNotRequest)
			c.Close()
			return
		}
		in.streams.add()
		defer in.streams.done()
		in.Metrics.Connections.WithLabelValues("inbound", "", "ok").Inc()
		in.ServePlainHTTP(c)
		return
	}
	defer c.Close()
	if d := in.AuthorizePlain(); !d.Allow {
		in.Metrics.Connections.WithLabelValues("inbound", "", "denied").Inc()
		in.Metrics.Denied.WithLabelValues("", d.Code).Inc()
		in.Logger.Info("plain connection denied", "remote", c.RemoteAddr().String(), "reason", d.Reason, "code", d.Code)
		return
	}
	app, err := in.dialApp(in.ctx)
	if err != nil {
		in.Metrics.Connections.WithLabelValues("inbound", "", "error").Inc()
		return
	}
	defer app.Close()
	in.streams.add()
	defer in.streams.done()
	in.Metrics.Connections.WithLabelValues("inbound", "", "ok").Inc()
	Join(c, app, in.HalfCloseTimeout)
}

// Reauthorize checks every open connection against Authorize again and
// closes those it now denies, so that revoking an intention also ends
// connections opened before the change. Call it after a policy change.
func (in *Inbound) Reauthorize() int {
	in.init()
	in.mu.Lock()
	defer in.mu.Unlock()
	n := 0
	for st := range in.open {
		if d := in.Authorize(st.peer); !d.Allow {
			st.app.Close()
			delete(in.open, st)
			n++
			in.Logger.Info("closed connection no longer allowed", "peer", st.peer.String(), "reason", d.Reason)
		}
	}
	return n
}

// dialApp connects to the app. The app is on this host, so TCP keep-alive
// probes would only cost three setsockopt calls per connection.
func (in *Inbound) dialApp(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: in.DialTimeout, KeepAlive: -1}
	return d.DialContext(ctx, "tcp", in.Target)
}

// Drain stops new streams (GOAWAY to every peer) and waits for open ones to
// finish until ctx ends; then it closes every connection, ends the dials
// and handshakes in progress, and waits for the connections' goroutines.
// Close the listener first.
func (in *Inbound) Drain(ctx context.Context) error {
	in.init()
	in.mu.Lock()
	in.draining = true
	for c := range in.conns {
		c.Shutdown()
	}
	in.mu.Unlock()
	var err error
	if werr := in.streams.wait(ctx); werr != nil {
		err = fmt.Errorf("drain: %d connections still open: %w", in.streams.n.Load(), werr)
	}
	in.mu.Lock()
	for c := range in.conns {
		c.Close()
	}
	in.mu.Unlock()
	in.cancel()
	in.handlers.Wait()
	in.streams.wait(context.Background()) // they end with their connections
	return err
}
