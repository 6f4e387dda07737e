package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/stats"
	"github.com/trellis-mesh/trellis/internal/store"
)

// Metric-gated canaries. One server at a time drives every canary: the
// one holding keyCanaryLeader, a key under its lease (taken with a
// leased create, so two servers never both hold it; gone with its holder
// within the lease TTL). Every write the leader makes also rewrites that
// key at the revision it last saw, so a server that lost the lock
// without noticing yet cannot move a canary: its commit conflicts.
//
// The leader writes a Route's weights as an apply does (the same key,
// the same validation, at the revision it read, so a user's apply in
// between wins), and proxies get them by snapshot. Beside the Route, at
// keyCanaryStatus, it keeps the canary's status: step, state, last
// decision and events. The status names the Route's store revision it
// follows: any other write of the Route (a new apply) starts the canary
// again from its first step. Weights and status are written in one
// transaction: a leader that loses the lock (or stops) between the two
// would otherwise leave weights its status does not explain, and the
// next leader, taking them for a person's apply, would start the canary
// again (at its first step, even after a rollback).

const (
	keyCanaryLeader = "/canary/leader"
	keyCanaryStatus = "/canary/status/"
	// maxCanaryEvents bounds a status's event list.
	maxCanaryEvents = 50
)

func canaryStatusKey(route string) string { return keyCanaryStatus + route }

// Canary decisions.
const (
	canaryWait     = "wait"
	canaryNext     = "next"
	canaryPromote  = "promote"
	canaryRollback = "rollback"
)

// canaryStallIntervals bounds, in intervals, how long a step may go
// without being judged while it should be: see decideCanary.
const canaryStallIntervals = 2

// canaryFigures are what a step is judged by, over its window (the step
// so far, at most the last interval).
type canaryFigures struct {
	// Own is the canary version's inbound traffic, as its own proxies
	// counted it.
	Own v1.Traffic
	// Callers are the requests the callers' proxies sent the canary
	// version (by any route), and CallersFailed those answered 5xx,
	// their own 502, 503 (no healthy endpoint) and 504 included: the
	// requests that never reached the version are only counted here.
	Callers, CallersFailed uint64
	// Offered are the requests callers sent through the canary's rule,
	// to either version.
	Offered uint64
	// NoneHealthy is how long, within the step, the canary version has
	// had no healthy instance as far as this server saw; zero while it
	// has one.
	NoneHealthy time.Duration
}

// decideCanary judges a canary at step (an index into p.Steps) that has
// run for elapsed, from its version's figures f. Figures that break a
// bound roll it back at once, whenever they are seen, once there are
// p.MinRequests of them: the version's own, or its callers' (whose
// success rate counts the requests that never reached it). Figures that
// hold move it on only after a whole interval. A step that cannot be
// judged waits, but rolls back once it has lacked p.MinRequests of its
// own figures for canaryStallIntervals while it should have had them:
// the version has had no healthy instance for that long, or callers
// sent the rule p.MinRequests in the window (the step has run that long
// and its last interval still falls short). Without any traffic to the
// rule, and with a healthy instance, the step waits: nothing fails.
func decideCanary(p *v1.CanaryPolicy, step int, elapsed time.Duration, f canaryFigures, now time.Time) v1.CanaryDecision {
	t := f.Own
	d := v1.CanaryDecision{Requests: t.Requests, P99Ms: t.P99Ms, At: now.UTC(), CallerRequests: f.Callers}
	if t.SuccessRate != nil {
		pct := *t.SuccessRate * 100
		d.SuccessRate = &pct
	}
	if f.Callers > 0 {
		pct := 100 * float64(f.Callers-min(f.CallersFailed, f.Callers)) / float64(f.Callers)
		d.CallerSuccessRate = &pct
	}
	need := uint64(p.EffectiveMinRequests())
	stall := canaryStallIntervals * p.IntervalDuration()
	// v2's own figures first: they are the most direct, and the only
	// latency. The callers' count the same requests and those that never
	// reached it.
	own := t.Requests >= need && d.SuccessRate != nil
	callers := d.CallerSuccessRate != nil && f.Callers >= need
	switch maxP99 := float64(p.MaxP99Duration()) / float64(time.Millisecond); {
	case own && *d.SuccessRate < p.MinSuccessRate:
		d.Action, d.Reason = canaryRollback, fmt.Sprintf("success rate %.2f %% is below %v %%", *d.SuccessRate, p.MinSuccessRate)
	case own && t.P99Ms > maxP99:
		d.Action, d.Reason = canaryRollback, fmt.Sprintf("p99 %.1f ms is above %s", t.P99Ms, p.MaxP99)
	case callers && *d.CallerSuccessRate < p.MinSuccessRate:
		d.Action, d.Reason = canaryRollback, fmt.Sprintf("callers' success rate %.2f %% over %d requests to %s is below %v %% (%d failed: 5xx, no healthy endpoint or connection failures)",
			*d.CallerSuccessRate, f.Callers, p.Version, p.MinSuccessRate, f.CallersFailed)
	case !own:
		switch {
		case f.NoneHealthy >= stall:
			d.Action, d.Reason = canaryRollback, fmt.Sprintf("%s has had no healthy instance for %v (%d intervals), %d requests of %d needed to judge",
				p.Version, f.NoneHealthy.Truncate(time.Second), canaryStallIntervals, t.Requests, need)
		case elapsed >= stall && f.Offered >= need:
			d.Action, d.Reason = canaryRollback, fmt.Sprintf("%d requests to %s (its callers counted %d) while callers sent the rule %d, %d needed to judge, after %d intervals: too little traffic for the step's weight (raise interval or lower minRequests)",
				t.Requests, p.Version, f.Callers, f.Offered, need, canaryStallIntervals)
		case f.NoneHealthy > 0:
			d.Action, d.Reason = canaryWait, fmt.Sprintf("%d requests to %s, %d needed to judge; %s has had no healthy instance for %v (rolled back at %v)",
				t.Requests, p.Version, need, p.Version, f.NoneHealthy.Truncate(time.Second), stall)
		default:
			d.Action, d.Reason = canaryWait, fmt.Sprintf("%d requests to %s, %d needed to judge", t.Requests, p.Version, need)
		}
	case elapsed < p.IntervalDuration():
		d.Action, d.Reason = canaryWait, fmt.Sprintf("figures hold; the step has run %v of %s", elapsed.Truncate(time.Second), p.Interval)
	case step >= len(p.Steps)-1:
		d.Action, d.Reason = canaryPromote, fmt.Sprintf("figures held for %s at 100 %%", p.Interval)
	default:
		d.Action, d.Reason = canaryNext, fmt.Sprintf("figures held for %s at %d %%", p.Interval, p.Steps[step])
	}
	return d
}

// canaryRule returns the index of the Route's rule with a canary, or -1.
func canaryRule(r *v1.RouteSpec) int {
	if r == nil {
		return -1
	}
	for i := range r.Rules {
		if r.Rules[i].Canary != nil {
			return i
		}
	}
	return -1
}

func ruleName(r *v1.RouteRule, i int) string {
	if r.Name != "" {
		return r.Name
	}
	return fmt.Sprintf("rule-%d", i+1)
}

// checkCanaryIntervals refuses canaries whose interval is shorter than two
// of this server's stats intervals: the figures of a shorter one would
// rest on a summary or two.
func (s *Server) checkCanaryIntervals(in []v1.Resource) []string {
	floor := 2 * s.stats.Interval()
	var errs []string
	for i, res := range in {
		if res.Kind != v1.KindRoute || res.Route == nil {
			continue
		}
		ri := canaryRule(res.Route)
		if ri < 0 {
			continue
		}
		if d := res.Route.Rules[ri].Canary.IntervalDuration(); d < floor {
			errs = append(errs, fmt.Sprintf("resource %d (%s %q): spec.rules[%d].canary.interval: %v is shorter than twice the server's stats interval (%v): want at least %v",
				i+1, res.Kind, res.Name, ri, d, s.stats.Interval(), floor))
		}
	}
	return errs
}

// canaryLock is the leader's hold on keyCanaryLeader.
type canaryLock struct {
	st    store.Store
	id    string
	lease store.LeaseID
	rev   int64 // the lock key's revision as last written
}

// commit writes ops and the lock key in one transaction that holds only
// while the lock is still this server's.
func (l *canaryLock) commit(ctx context.Context, ops ...store.Op) error {
	ops = append(ops, store.Op{Key: keyCanaryLeader, Value: []byte(l.id), IfRev: l.rev, Lease: l.lease})
	if err := l.st.Commit(ctx, ops); err != nil {
		return err
	}
	return l.refresh(ctx)
}

// refresh reads the lock key's revision, and fails if the lock is lost.
func (l *canaryLock) refresh(ctx context.Context) error {
	kv, err := l.st.Get(ctx, keyCanaryLeader)
	if err != nil {
		return fmt.Errorf("canary lock: %w", err)
	}
	if string(kv.Value) != l.id {
		return errors.New("canary lock: taken by another server")
	}
	l.rev = kv.Rev
	return nil
}

// runCanaries drives canaries while this server holds the lock, and
// tries to take it while it does not, until ctx ends.
func (s *Server) runCanaries(ctx context.Context) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	for ctx.Err() == nil {
		l, err := s.takeCanaryLock(ctx, id)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, store.ErrConflict) {
				s.log.Warn("canary lock", "err", err)
			}
			sleep(ctx, s.cfg.LeaseTTL/2)
			continue
		}
		s.log.Info("driving canaries", "lock", id)
		s.leadCanaries(ctx, l)
		// Let another server take over now rather than at the lease's end.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = s.store.Revoke(rctx, l.lease)
		cancel()
		s.log.Info("no longer driving canaries", "lock", id)
	}
}

func (s *Server) takeCanaryLock(ctx context.Context, id string) (*canaryLock, error) {
	// A held lock costs the others a read, not a lease each try.
	if _, err := s.store.Get(ctx, keyCanaryLeader); err == nil {
		return nil, store.ErrConflict
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	lease, err := s.store.Grant(ctx, s.cfg.LeaseTTL)
	if err != nil {
		return nil, err
	}
	l := &canaryLock{st: s.store, id: id, lease: lease}
	if err := s.store.Commit(ctx, []store.Op{{Key: keyCanaryLeader, Value: []byte(id), IfRev: -1, Lease: lease}}); err != nil {
		_ = s.store.Revoke(context.WithoutCancel(ctx), lease)
		return nil, err
	}
	if err := l.refresh(ctx); err != nil {
		_ = s.store.Revoke(context.WithoutCancel(ctx), lease)
		return nil, err
	}
	return l, nil
}

// canaryTick is how often the leader looks at its canaries: half a stats
// interval, so that a rollback follows the summary that calls for it.
func (s *Server) canaryTick() time.Duration {
	return min(max(s.stats.Interval()/2, 250*time.Millisecond), 2*time.Second)
}

// leadCanaries drives every canary until ctx ends or the lock is lost.
func (s *Server) leadCanaries(ctx context.Context, l *canaryLock) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		defer cancel()
		err := s.store.KeepAlive(lctx, l.lease)
		if lctx.Err() == nil {
			s.log.Warn("canary lock lost", "err", err)
		}
	}()
	defer func() { <-kept }()
	memo := newCanaryMemo()
	t := time.NewTicker(s.canaryTick())
	defer t.Stop()
	for {
		if err := s.canaryPass(lctx, l, memo); err != nil {
			if lctx.Err() == nil {
				s.log.Warn("canary pass", "err", err)
			}
			if errors.Is(err, errLockLost) {
				return
			}
		}
		select {
		case <-lctx.Done():
			return
		case <-t.C:
		}
	}
}

var errLockLost = errors.New("canary lock lost")

// canaryPass looks at every Route once: starts, moves, promotes or rolls
// back its canary, and drops the status of a Route that has none.
func (s *Server) canaryPass(ctx context.Context, l *canaryLock, memo *canaryMemo) error {
	kvs, _, err := s.store.List(ctx, keyCanaryStatus)
	if err != nil {
		return err
	}
	statuses := map[string]storedStatus{}
	for _, kv := range kvs {
		var st v1.CanaryStatus
		if err := json.Unmarshal(kv.Value, &st); err != nil {
			s.log.Error("skip undecodable canary status in store", "key", kv.Key, "err", err)
			continue
		}
		statuses[st.Route] = storedStatus{st: &st, rev: kv.Rev}
	}
	var errs []error
	for _, res := range s.state.listResources(v1.KindRoute) {
		if canaryRule(res.Route) < 0 {
			continue
		}
		if err := s.driveCanary(ctx, l, res.Name, statuses[res.Name], memo); err != nil {
			if errors.Is(err, store.ErrConflict) && l.refresh(ctx) != nil {
				return errLockLost
			}
			errs = append(errs, fmt.Errorf("route %s: %w", res.Name, err))
		}
		delete(statuses, res.Name)
	}
	for name := range statuses {
		memo.forget(name)
		if err := l.commit(ctx, store.Op{Key: canaryStatusKey(name), Delete: true}); err != nil {
			errs = append(errs, fmt.Errorf("drop canary status of %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// storedStatus is a canary status as the store holds it, with the
// revision it was written at.
type storedStatus struct {
	st  *v1.CanaryStatus
	rev int64
}

// follows reports whether the status follows the Route at revision rev:
// it names rev, or it was written with the Route's weights, in one
// transaction (RouteRev zero, the same revision).
func (ss storedStatus) follows(rev int64) bool {
	return ss.st != nil && (ss.st.RouteRev == rev || ss.st.RouteRev == 0 && ss.rev == rev)
}

// driveCanary takes one Route's canary one decision further; ss is its
// stored status, if any.
func (s *Server) driveCanary(ctx context.Context, l *canaryLock, name string, ss storedStatus, memo *canaryMemo) error {
	kv, err := s.store.Get(ctx, resourceKey(v1.KindRoute, name))
	if errors.Is(err, store.ErrNotFound) {
		return nil // deleted meanwhile; the next pass drops its status
	}
	if err != nil {
		return err
	}
	var res v1.Resource
	if err := json.Unmarshal(kv.Value, &res); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	ri := canaryRule(res.Route)
	if ri < 0 {
		return nil
	}
	rule := &res.Route.Rules[ri]
	p := rule.Canary
	now := time.Now()
	st := ss.st
	if ss.follows(kv.Rev) {
		st.RouteRev = kv.Rev // what a status-only write keeps
	} else {
		// A new apply of the Route: the canary starts from its first
		// step, whatever it did before.
		stable := rule.Targets[0].Version
		if stable == p.Version {
			stable = rule.Targets[1].Version
		}
		if st == nil {
			st = &v1.CanaryStatus{}
		}
		*st = v1.CanaryStatus{
			Route: name, Rule: ruleName(rule, ri), Version: p.Version, Stable: stable,
			State: v1.CanaryProgressing, Step: 0, Weight: p.Steps[0], StepStarted: now.UTC(),
			Events: st.Events,
		}
		addEvent(st, now, fmt.Sprintf("started: %s at %d %%, %s at %d %% (step 1 of %d)", p.Version, p.Steps[0], stable, 100-p.Steps[0], len(p.Steps)))
		s.log.Info("canary started", "route", name, "version", p.Version, "weight", p.Steps[0])
		return s.writeCanary(ctx, l, &res, ri, kv, st)
	}
	if st.State != v1.CanaryProgressing {
		memo.forget(name)
		return nil
	}
	elapsed := now.Sub(st.StepStarted)
	window := min(max(elapsed, s.stats.Interval()), p.IntervalDuration())
	noneHealthy := memo.healthy(name, s.healthyInstances(name, p.Version) > 0, st.StepStarted, now)
	f := s.canaryFigures(name, st.Rule, p, window, noneHealthy, now)
	d := decideCanary(p, st.Step, elapsed, f, now)
	st.Last = &d
	switch d.Action {
	case canaryWait:
		// Waits are written at most once a stats interval: they change
		// no weight, only the figures shown.
		if now.Sub(memo.wrote[name]) < s.stats.Interval() {
			return nil
		}
		memo.wrote[name] = now
		return s.writeStatus(ctx, l, st)
	case canaryRollback:
		st.State, st.Weight = v1.CanaryRolledBack, 0
		addEvent(st, now, fmt.Sprintf("rolled back at step %d (%d %%): %s (%d requests); %s at 0 %%, %s at 100 %%",
			st.Step+1, p.Steps[st.Step], d.Reason, d.Requests, p.Version, st.Stable))
		s.log.Warn("canary rolled back", "route", name, "version", p.Version, "reason", d.Reason, "requests", d.Requests)
		return s.writeCanary(ctx, l, &res, ri, kv, st)
	case canaryNext:
		st.Step++
		st.Weight, st.StepStarted = p.Steps[st.Step], now.UTC()
		addEvent(st, now, fmt.Sprintf("step %d of %d: %s at %d %% (%s, %d requests)", st.Step+1, len(p.Steps), p.Version, st.Weight, d.Reason, d.Requests))
		s.log.Info("canary step", "route", name, "version", p.Version, "weight", st.Weight)
		return s.writeCanary(ctx, l, &res, ri, kv, st)
	default: // promote
		st.State = v1.CanaryPromoted
		addEvent(st, now, fmt.Sprintf("promoted: %s (%d requests)", d.Reason, d.Requests))
		s.log.Info("canary promoted", "route", name, "version", p.Version)
		return s.writeStatus(ctx, l, st)
	}
}

// canaryMemo is what the leader keeps between passes, in memory: lost
// with the lock, which only delays a wait's write or a stall's rollback.
// Only the leader's loop uses it.
type canaryMemo struct {
	// wrote is when each Route's last wait was written.
	wrote map[string]time.Time
	// noneHealthy is since when each Route's canary version has had no
	// healthy instance, as this leader saw it.
	noneHealthy map[string]time.Time
}

func newCanaryMemo() *canaryMemo {
	return &canaryMemo{wrote: map[string]time.Time{}, noneHealthy: map[string]time.Time{}}
}

// healthy records whether route's canary version has a healthy instance
// now, and returns how long, within the step started at stepStarted, it
// has had none.
func (m *canaryMemo) healthy(route string, ok bool, stepStarted, now time.Time) time.Duration {
	if ok {
		delete(m.noneHealthy, route)
		return 0
	}
	since, seen := m.noneHealthy[route]
	if !seen {
		since = now
		m.noneHealthy[route] = now
	}
	if stepStarted.After(since) {
		since = stepStarted
	}
	return max(now.Sub(since), 0)
}

func (m *canaryMemo) forget(route string) {
	delete(m.wrote, route)
	delete(m.noneHealthy, route)
}

func addEvent(st *v1.CanaryStatus, at time.Time, msg string) {
	st.Events = append(st.Events, v1.CanaryEvent{At: at.UTC(), Message: msg})
	if n := len(st.Events) - maxCanaryEvents; n > 0 {
		st.Events = append(st.Events[:0:0], st.Events[n:]...)
	}
}

// canaryFigures gathers what a canary step is judged by over window: the
// version's own inbound traffic, its callers' outbound traffic to it and
// through rule, and noneHealthy (the leader's count, see canaryMemo).
func (s *Server) canaryFigures(service, rule string, p *v1.CanaryPolicy, window time.Duration, noneHealthy time.Duration, now time.Time) canaryFigures {
	f := canaryFigures{NoneHealthy: noneHealthy}
	out := s.stats.Stats(stats.Query{Window: window, Service: service}, now)
	for _, sv := range out.Services {
		if sv.Name != service {
			continue
		}
		for _, v := range sv.Versions {
			if v.Version == p.Version {
				f.Own = v.Traffic
			}
		}
	}
	for _, e := range out.Edges {
		if e.Destination != service {
			continue
		}
		for _, r := range e.Routes {
			if r.Version == p.Version {
				f.Callers += r.Requests
				f.CallersFailed += r.Codes["5xx"]
			}
			if r.Route == rule {
				f.Offered += r.Requests
			}
		}
	}
	return f
}

// healthyInstances counts the healthy instances of service at version.
func (s *Server) healthyInstances(service, version string) int {
	n := 0
	for _, in := range s.state.mesh().Instances[service] {
		if in.Version == version && in.Healthy {
			n++
		}
	}
	return n
}

// writeCanary sets the rule's weights to the status's (the canary's
// Weight, the stable version the rest), as an apply would, then the
// status following the Route's new revision.
func (s *Server) writeCanary(ctx context.Context, l *canaryLock, res *v1.Resource, ri int, was store.KV, st *v1.CanaryStatus) error {
	rule := &res.Route.Rules[ri]
	for i := range rule.Targets {
		if rule.Targets[i].Version == st.Version {
			rule.Targets[i].Weight = st.Weight
		} else {
			rule.Targets[i].Weight = 100 - st.Weight
		}
	}
	if err := res.Validate(); err != nil {
		return fmt.Errorf("weights %d/%d: %w", st.Weight, 100-st.Weight, err)
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	// Route and status in one transaction, the Route's at the revision
	// read (a person's apply in between wins): the status follows the
	// revision they are written at (RouteRev zero).
	st.RouteRev = 0
	sb, err := json.Marshal(st)
	if err != nil {
		return err
	}
	err = l.commit(ctx,
		store.Op{Key: resourceKey(v1.KindRoute, res.Name), Value: b, IfRev: was.Rev},
		store.Op{Key: canaryStatusKey(st.Route), Value: sb})
	if err != nil {
		return fmt.Errorf("write weights and canary status: %w", err)
	}
	return nil
}

func (s *Server) writeStatus(ctx context.Context, l *canaryLock, st *v1.CanaryStatus) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := l.commit(ctx, store.Op{Key: canaryStatusKey(st.Route), Value: b}); err != nil {
		return fmt.Errorf("write canary status: %w", err)
	}
	return nil
}

// getCanary answers GET /v1/routes/{name}/canary from the store: any
// server answers, not only the leader.
func (s *Server) getCanary(_ principal, r *http.Request) (any, error) {
	name := r.PathValue("name")
	if err := identity.ValidateServiceName(name); err != nil {
		return nil, badRequest("route name: %v", err)
	}
	kv, err := s.store.Get(r.Context(), canaryStatusKey(name))
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("Route %q has no canary", name)
	}
	if err != nil {
		return nil, err
	}
	var st v1.CanaryStatus
	if err := json.Unmarshal(kv.Value, &st); err != nil {
		return nil, fmt.Errorf("decode canary status of %s: %w", name, err)
	}
	return st, nil
}
