package meshdns

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Default per-client rate: queries per second, and the burst above it.
const (
	DefaultRate  = 200
	DefaultBurst = 400
)

// maxClients bounds the limiters kept: beyond it, those idle for a while
// are forgotten (and, if all are busy, all are).
const maxClients = 10000

// clientLimits is a token bucket per client address.
type clientLimits struct {
	rate  rate.Limit
	burst int

	mu      sync.Mutex
	clients map[netip.Addr]*clientLimit // guarded by mu
}

type clientLimit struct {
	l    *rate.Limiter
	seen time.Time
}

// newClientLimits allows each client qps queries a second with burst; a
// negative qps allows everything.
func newClientLimits(qps float64, burst int) *clientLimits {
	if qps == 0 {
		qps = DefaultRate
	}
	if burst <= 0 {
		burst = max(DefaultBurst, int(qps))
	}
	c := &clientLimits{rate: rate.Limit(qps), burst: burst, clients: map[netip.Addr]*clientLimit{}}
	if qps < 0 {
		c.rate = rate.Inf
	}
	return c
}

func (c *clientLimits) allow(addr net.Addr) bool {
	if c.rate == rate.Inf {
		return true
	}
	ip := addrIP(addr)
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.clients[ip]
	if cl == nil {
		if len(c.clients) >= maxClients {
			c.sweepLocked(now)
		}
		cl = &clientLimit{l: rate.NewLimiter(c.rate, c.burst)}
		c.clients[ip] = cl
	}
	cl.seen = now
	return cl.l.AllowN(now, 1)
}

// sweepLocked forgets clients idle long enough for their bucket to be
// full again, or every client when none is.
func (c *clientLimits) sweepLocked(now time.Time) {
	idle := time.Duration(float64(c.burst)/float64(c.rate)*float64(time.Second)) + time.Second
	for ip, cl := range c.clients {
		if now.Sub(cl.seen) > idle {
			delete(c.clients, ip)
		}
	}
	if len(c.clients) >= maxClients {
		clear(c.clients)
	}
}

func addrIP(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap.Addr().Unmap()
}
