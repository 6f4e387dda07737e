package l4

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
)

// Guard keeps every open mTLS connection between proxies within the trust
// that admitted it. A handshake checks the peer once; a connection then
// lives for minutes or days, so the Guard checks again:
//
//   - when the trust bundle changes (Recheck), every connection's peer
//     chain is verified again with certs.VerifySVID, the handshake's own
//     check, and those that no longer verify are retired;
//   - every connection is retired before the earlier of the two leaves'
//     expiry, the peer's and this proxy's own at the time of the
//     handshake (a renewed proxy's connections made with its old leaf go
//     before that leaf expires); see retirement for when.
//
// Retiring means: no new stream (a server sends GOAWAY; a pooled client
// connection stops taking streams, so the pool dials a fresh one), the
// streams in flight finish, and the connection closes when they have, or
// at a bound (Drain for a trust change; before the leaf's expiry for an
// expiry) whatever they do.
//
// Concurrency: mu guards conns and each tracked connection's retired
// flag; timers and Recheck call retire, which takes mu, then calls the
// connection's Shutdown and Close without it.
type Guard struct {
	// Bundle returns the current trust bundle.
	Bundle func() *certs.Bundle
	// Own returns this proxy's current certificate (nil: none yet).
	Own func() *tls.Certificate
	// Drain bounds how long the streams of a connection retired for a
	// trust change may run on (10s).
	Drain time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
	// Metrics; nil means unregistered ones.
	Metrics *Metrics

	once  sync.Once
	mu    sync.Mutex
	conns map[*tracked]struct{}
}

// tracked is one connection under watch.
type tracked struct {
	conn      *tunnel.Conn
	direction string // inbound | outbound
	peer      identity.ID
	chain     []*x509.Certificate // as the peer sent it, leaf first
	expires   time.Time           // the earliest NotAfter of the peer's chain and our leaf
	closeAt   time.Time           // when it must be closed, for expiry
	timer     *time.Timer         // fires at the start of the expiry retirement
	retired   bool                // under Guard.mu
}

// Reasons a connection is retired, as labelled in
// trellis_tls_connections_retired_total.
const (
	RetiredTrust  = "trust"  // the trust bundle no longer verifies the peer
	RetiredExpiry = "expiry" // a leaf of the handshake is about to expire
)

func (g *Guard) init() {
	g.once.Do(func() {
		if g.Drain == 0 {
			g.Drain = 10 * time.Second
		}
		if g.Logger == nil {
			g.Logger = slog.New(slog.DiscardHandler)
		}
		if g.Metrics == nil {
			g.Metrics = NewMetrics(nil)
		}
		g.conns = map[*tracked]struct{}{}
	})
}

// Before is what Track needs to know of the moment before a handshake.
type Before struct {
	bundle *certs.Bundle
	own    time.Time // NotAfter of this proxy's leaf; zero if none
}

// Before records the bundle and this proxy's leaf before a handshake.
func (g *Guard) Before() Before {
	if g == nil {
		return Before{}
	}
	var b Before
	if g.Bundle != nil {
		b.bundle = g.Bundle()
	}
	b.own = g.ownExpiry()
	return b
}

func (g *Guard) ownExpiry() time.Time {
	if g.Own == nil {
		return time.Time{}
	}
	if c := g.Own(); c != nil && c.Leaf != nil {
		return c.Leaf.NotAfter
	}
	return time.Time{}
}

// Track watches conn, whose handshake gave cs, until it ends. before was
// taken just before the handshake. It returns false, having closed conn,
// when conn must not be used at all: its peer no longer verifies under a
// bundle that changed during the handshake, or a leaf expires too soon to
// carry anything.
//
// A nil Guard tracks nothing.
func (g *Guard) Track(conn *tunnel.Conn, direction string, cs tls.ConnectionState, before Before) bool {
	if g == nil {
		return true
	}
	g.init()
	peer, _ := certs.PeerID(cs)
	t := &tracked{conn: conn, direction: direction, peer: peer, chain: cs.PeerCertificates}
	now := time.Now()
	// The leaf served in the handshake is the one current before it or
	// the one after (a renewal in between): the earlier of the two is
	// never later than the one served.
	own := before.own
	if after := g.ownExpiry(); own.IsZero() || !after.IsZero() && after.Before(own) {
		own = after
	}
	t.expires = expiry(t.chain, own)
	goawayAt, closeAt := retirement(now, t.expires, direction)
	t.closeAt = closeAt
	if !closeAt.After(now) {
		g.count(t, RetiredExpiry, "certificate expires at "+t.expires.Format(time.RFC3339))
		conn.Close()
		return false
	}
	g.mu.Lock()
	g.conns[t] = struct{}{}
	t.timer = time.AfterFunc(goawayAt.Sub(now), func() { g.retire(t, RetiredExpiry, "") })
	g.mu.Unlock()
	go func() {
		<-conn.Done()
		g.mu.Lock()
		delete(g.conns, t)
		t.timer.Stop()
		g.mu.Unlock()
	}()
	// A bundle set after before was taken may have been rechecked before
	// t was in conns. Read it only now that t is: a Recheck that missed t
	// came after its bundle was set, so the bundle read here is that one.
	if g.Bundle != nil {
		if b := g.Bundle(); b != nil && b != before.bundle {
			if _, err := certs.VerifySVID(t.chain, b, time.Now()); err != nil {
				g.mu.Lock()
				first := !t.retired
				t.retired = true
				t.timer.Stop()
				g.mu.Unlock()
				if first {
					g.count(t, RetiredTrust, err.Error())
				}
				conn.Close()
				return false
			}
		}
	}
	return true
}

// expiry is when a connection's trust ends: the earliest NotAfter of the
// peer's chain (its leaf, or an intermediate that expires before it) and
// of own, this proxy's leaf (zero: unknown).
func expiry(chain []*x509.Certificate, own time.Time) time.Time {
	end := own
	for _, c := range chain {
		if end.IsZero() || c.NotAfter.Before(end) {
			end = c.NotAfter
		}
	}
	return end
}

// retirement returns when a connection made at now, whose leaves expire
// at expires, starts its retirement and when it is closed whatever its
// streams do. The close leaves a sixth of the connection's life (at most
// 5s) before the expiry, for clocks, late timers on a busy host and the
// last bytes; the retirement starts a fifth of its life (at most 30s)
// before that, so that streams in flight can finish. The outbound side starts a little earlier than
// the inbound side of the same connection, so that the pool has replaced
// it before the peer's GOAWAY could refuse a stream. Both bounds are
// fractions of the life left, so a connection made late in its leaves'
// life still carries streams for most of what is left.
func retirement(now, expires time.Time, direction string) (goawayAt, closeAt time.Time) {
	life := expires.Sub(now)
	if life <= 0 {
		return now, now
	}
	closeAt = expires.Add(-min(life/6, 5*time.Second))
	lead := min(life/5, 30*time.Second)
	if direction == "outbound" {
		lead += min(life/20, 5*time.Second)
	}
	return closeAt.Add(-lead), closeAt
}

// Recheck verifies the peer of every open connection against b and
// retires those it no longer verifies. It returns how many it retired.
// Call it when the trust bundle's roots change.
func (g *Guard) Recheck(b *certs.Bundle) int {
	if g == nil || b == nil {
		return 0
	}
	g.init()
	g.mu.Lock()
	all := make([]*tracked, 0, len(g.conns))
	for t := range g.conns {
		if !t.retired {
			all = append(all, t)
		}
	}
	g.mu.Unlock()
	now := time.Now()
	n := 0
	for _, t := range all {
		if _, err := certs.VerifySVID(t.chain, b, now); err != nil {
			if g.retire(t, RetiredTrust, err.Error()) {
				n++
			}
		}
	}
	return n
}

// retire stops new streams on t and closes it when its streams are done or
// at its bound; it reports whether t was not retired already.
func (g *Guard) retire(t *tracked, reason, detail string) bool {
	g.mu.Lock()
	if t.retired {
		g.mu.Unlock()
		return false
	}
	t.retired = true
	t.timer.Stop()
	g.mu.Unlock()
	bound := g.Drain
	if reason == RetiredExpiry {
		bound = time.Until(t.closeAt)
		detail = "certificate expires at " + t.expires.Format(time.RFC3339)
	}
	g.count(t, reason, detail)
	t.conn.Shutdown()
	go func() {
		timer := time.NewTimer(bound)
		defer timer.Stop()
		select {
		case <-t.conn.Done():
		case <-timer.C:
			n := t.conn.StreamCount()
			t.conn.Close()
			if n > 0 {
				g.Logger.Info("closed retired connection with streams still open", "direction", t.direction, "peer", t.peer.String(), "reason", reason, "streams", n)
			}
		}
	}()
	return true
}

// count records a retirement in the metric and the log.
func (g *Guard) count(t *tracked, reason, detail string) {
	g.Metrics.Retired.WithLabelValues(t.direction, t.peer.Service(), reason).Inc()
	g.Logger.Info("retiring mTLS connection", "direction", t.direction, "peer", t.peer.String(),
		"remote", t.conn.RemoteAddr().String(), "reason", reason, "detail", detail, "streams", t.conn.StreamCount())
}

// Open returns the number of connections under watch.
func (g *Guard) Open() int {
	if g == nil {
		return 0
	}
	g.init()
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.conns)
}
