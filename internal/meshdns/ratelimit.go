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
// are forgotten, and while none is, new clients share one bucket.
const maxClients = 10000

// ipv6ClientBits is the prefix an IPv6 client is known by: a host holds a
// /64 at least, and could take any address in it for each query.
const ipv6ClientBits = 64

// clientLimits is a token bucket per client address (per /64 for IPv6).
type clientLimits struct {
	rate  rate.Limit
	burst int

	mu      sync.Mutex
	clients map[netip.Addr]*clientLimit // guarded by mu
	// overflow is the bucket clients past maxClients share while every
	// kept one is busy (a flood from many sources): emptying the table
	// instead would give the clients over their rate full buckets again.
	overflow *rate.Limiter // guarded by mu
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
	c.overflow = rate.NewLimiter(c.rate, c.burst)
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
		if len(c.clients) >= maxClients {
			return c.overflow.AllowN(now, 1)
		}
		cl = &clientLimit{l: rate.NewLimiter(c.rate, c.burst)}
		c.clients[ip] = cl
	}
	cl.seen = now
	return cl.l.AllowN(now, 1)
}

// sweepLocked forgets clients idle long enough for their bucket to be
// full again: forgetting them gives them nothing they would not have.
func (c *clientLimits) sweepLocked(now time.Time) {
	idle := time.Duration(float64(c.burst)/float64(c.rate)*float64(time.Second)) + time.Second
	for ip, cl := range c.clients {
		if now.Sub(cl.seen) > idle {
			delete(c.clients, ip)
		}
	}
}

// addrIP is the client a's key: its IPv4 address, or its IPv6 /64.
func addrIP(a net.Addr) netip.Addr {
	var ip netip.Addr
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case nil:
		return netip.Addr{}
	default:
		ap, _ := netip.ParseAddrPort(a.String())
		ip = ap.Addr()
	}
	if ip = ip.Unmap(); ip.Is6() {
		if p, err := ip.Prefix(ipv6ClientBits); err == nil {
			return p.Addr()
		}
	}
	return ip
}
