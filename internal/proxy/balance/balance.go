// Package balance picks the endpoint of a service for the next connection or
// request: power of two choices on open work, with ejection of endpoints
// that fail.
package balance

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Endpoint is one place a service can be reached.
type Endpoint struct {
	Addr     string // host:port of the peer sidecar's mTLS listener
	Instance string
	Version  string

	// Via are the network gateways ("host:port") that reach Addr when it
	// is in another network: a connection dials one of them with TLS
	// server name SNI, and the gateway forwards it to Addr unopened.
	// Empty means dial Addr.
	Via []string
	SNI string
}

// Key identifies the endpoint for balancing, ejection and pooling: its
// SNI when it is reached through gateways, which names the instance, and
// otherwise its Addr. Networks joined by gateways may use the same
// private addresses, so Addr alone could stand for two instances.
func (e Endpoint) Key() string {
	if e.SNI != "" {
		return e.SNI
	}
	return e.Addr
}

// Balancer picks endpoints by power of two choices on open streams, and
// ejects an endpoint that fails to connect for a growing interval, so that a
// dead instance stops receiving connections before the control plane says
// it is gone.
type Balancer struct {
	mu     sync.Mutex
	active map[string]int      // addr -> open streams
	eject  map[string]ejection // addr -> ejection state
	now    func() time.Time
}

type ejection struct {
	until    time.Time
	failures int // ejections in a row, for the growing interval
	errors   int // consecutive errors since the last success
}

// ConsecutiveErrors is how many failed requests in a row (5xx, resets)
// eject an endpoint, as Envoy's outlier detection does by default.
const ConsecutiveErrors = 5

// Ejection intervals: base doubling per consecutive failure, capped.
const (
	ejectBase = 1 * time.Second
	ejectMax  = 30 * time.Second
)

// New returns a Balancer with no history.
func New() *Balancer {
	return &Balancer{active: map[string]int{}, eject: map[string]ejection{}, now: time.Now}
}

// Pick returns an endpoint not in tried, preferring non-ejected ones with
// fewer open streams. ok is false when every endpoint was tried.
func (b *Balancer) Pick(eps []Endpoint, tried map[string]bool) (Endpoint, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	// Most services have a few endpoints: their candidates fit on the
	// stack, and a pick costs no allocation.
	var buf [8]Endpoint
	cands, ejected := buf[:0], []Endpoint(nil)
	for _, e := range eps {
		if tried[e.Key()] {
			continue
		}
		if b.eject[e.Key()].until.After(now) {
			ejected = append(ejected, e)
			continue
		}
		cands = append(cands, e)
	}
	if len(cands) == 0 {
		// Every endpoint is ejected: trying one beats refusing outright.
		cands = ejected
	}
	switch len(cands) {
	case 0:
		return Endpoint{}, false
	case 1:
		return cands[0], true
	}
	i := rand.IntN(len(cands))
	j := rand.IntN(len(cands) - 1)
	if j >= i {
		j++
	}
	if b.active[cands[j].Key()] < b.active[cands[i].Key()] {
		i = j
	}
	return cands[i], true
}

// Start counts work started on addr.
func (b *Balancer) Start(addr string) {
	b.mu.Lock()
	b.active[addr]++
	b.mu.Unlock()
}

// Done counts work on addr finished.
func (b *Balancer) Done(addr string) {
	b.mu.Lock()
	if b.active[addr]--; b.active[addr] <= 0 {
		delete(b.active, addr)
	}
	b.mu.Unlock()
}

// Failed records a connect failure and ejects addr.
func (b *Balancer) Failed(addr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.eject[addr]
	e.failures++
	d := ejectBase << min(e.failures-1, 5)
	e.until = b.now().Add(min(d, ejectMax))
	b.eject[addr] = e
}

// Errored records a failed request (a 5xx answer, a reset) and ejects addr
// once ConsecutiveErrors come in a row; it reports whether it did.
func (b *Balancer) Errored(addr string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.eject[addr]
	e.errors++
	if e.errors < ConsecutiveErrors {
		b.eject[addr] = e
		return false
	}
	e.errors = 0
	e.failures++
	d := ejectBase << min(e.failures-1, 5)
	e.until = b.now().Add(min(d, ejectMax))
	b.eject[addr] = e
	return true
}

// Succeeded clears addr's ejection.
func (b *Balancer) Succeeded(addr string) {
	b.mu.Lock()
	if _, ok := b.eject[addr]; ok {
		delete(b.eject, addr)
	}
	b.mu.Unlock()
}
