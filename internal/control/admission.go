package control

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/store"
)

// DefaultMaxRegistering is the default Config.MaxRegistering.
const DefaultMaxRegistering = 32

// Registrations are admitted a few at a time.
//
// A registration is a lease grant and a transaction in the store. When
// thousands of proxies connect at once (a server starts, or takes over
// another's proxies), registering them all at once fills etcd's apply
// queue and it refuses writes ("too many requests"): streams failed,
// their proxies came back after a backoff, and the storm never settled.
// So at most Config.MaxRegistering streams register at a time; the others
// wait, holding their stream, in the order they came (a channel's
// senders queue first in, first out), until a slot is free or their
// proxy gives up. A registration the store refuses before it could apply
// it (store.ErrNotApplied: too many requests, no leader) is tried again
// after a backoff while it holds its slot, which slows every registration
// down while the store is overloaded, instead of failing the stream.
type admission struct {
	slots   chan struct{}
	waiting prometheus.Gauge
	active  prometheus.Gauge
	// retry is the backoff of a registration the store refused.
	retry backoff
}

// backoff is how often, and how far apart, a refused registration is
// tried again (admission.run).
type backoff struct {
	tries    int
	min, max time.Duration
}

func newAdmission(limit int, reg prometheus.Registerer) *admission {
	a := &admission{
		slots: make(chan struct{}, limit),
		// Up to 6 tries over about 3 s, about the time etcd takes to
		// drain a full apply queue.
		retry: backoff{tries: 6, min: 100 * time.Millisecond, max: 2 * time.Second},
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_control_registrations_waiting",
			Help: "Proxy streams waiting for their turn to register (Config.MaxRegistering are admitted at a time).",
		}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "trellis_control_registrations_active",
			Help: "Proxy streams registering now.",
		}),
	}
	reg.MustRegister(a.waiting, a.active)
	return a
}

// enter waits for a slot until ctx ends; the caller must leave once done.
func (a *admission) enter(ctx context.Context) error {
	select {
	case a.slots <- struct{}{}:
	default:
		a.waiting.Inc()
		defer a.waiting.Dec()
		select {
		case a.slots <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("waiting to register: %w", context.Cause(ctx))
		}
	}
	a.active.Inc()
	return nil
}

func (a *admission) leave() {
	a.active.Dec()
	<-a.slots
}

// run runs f, a registration, once admitted, until it succeeds, fails
// otherwise than with store.ErrNotApplied, ctx ends, or it was refused
// a.retry.tries times; between tries it waits a jittered, doubling
// backoff, holding its slot.
func (a *admission) run(ctx context.Context, f func() error) error {
	if err := a.enter(ctx); err != nil {
		return err
	}
	defer a.leave()
	wait := a.retry.min
	for try := 1; ; try++ {
		err := f()
		if err == nil || !errors.Is(err, store.ErrNotApplied) || errors.Is(err, store.ErrLeaseNotFound) || try >= a.retry.tries {
			return err
		}
		// Half to all of wait: streams refused together come back apart.
		t := time.NewTimer(wait/2 + mrand.N(wait/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, a.retry.max)
	}
}

// admitRegister registers ps once admitted (admission.run).
func (s *Server) admitRegister(ctx context.Context, ps *proxyStream, token string) error {
	return s.admission.run(ctx, func() error { return ps.register(ctx, token) })
}
