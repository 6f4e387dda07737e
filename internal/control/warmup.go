package control

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/topology"
)

// DefaultWarmUp is how long a starting server keeps remembered instances
// that have not re-registered in its snapshots.
const DefaultWarmUp = 30 * time.Second

// A warm-up after a start.
//
// When the whole control plane was down longer than the registration
// grace, the instances' leases expired although their proxies and apps
// kept serving. The servers come back to a store without them, and the
// first proxies to reconnect would get snapshots without every upstream
// whose proxy has not reconnected yet. So every registration is also
// remembered without a lease (keyRemembered), deleted only when the
// instance deregisters, and for Config.WarmUp after its start a server
// puts the remembered instances that are not registered into snapshots as
// they were last registered. An instance that re-registers replaces its
// remembered one; the warm-up's end drops the rest.
//
// A remembered instance that stays unregistered is forgotten (its record
// deleted) by a running server past its warm-up, after it saw it
// unregistered for one warm-up period: it has had a period to come back.

// rememberedInstance is an instance as last registered, and the revision
// of its record.
type rememberedInstance struct {
	v1.Instance
	rev int64
}

// applyRememberedLocked mirrors a remembered instance, and reports whether
// that can change a snapshot: only while warming up.
func (s *state) applyRememberedLocked(ev store.Event) bool {
	svc, id, ok := splitKey(ev.KV.Key, keyRemembered)
	if !ok {
		return false
	}
	if ev.Type == store.Delete {
		delete(s.remembered[svc], id)
		return s.warm
	}
	var in v1.Instance
	if err := json.Unmarshal(ev.KV.Value, &in); err != nil {
		s.log.Error("skip undecodable remembered instance in store", "key", ev.KV.Key, "err", err)
		return false
	}
	if s.remembered[svc] == nil {
		s.remembered[svc] = map[string]rememberedInstance{}
	}
	s.remembered[svc][id] = rememberedInstance{Instance: in, rev: ev.KV.Rev}
	return s.warm
}

// addRememberedLocked adds to m, while warming up, the remembered
// instances that are not registered.
func (s *state) addRememberedLocked(m *topology.Mesh) {
	if !s.warm {
		return
	}
	for svc, ins := range s.remembered {
		for id, r := range ins {
			if _, live := s.instances[svc][id]; !live {
				m.Instances[svc] = append(m.Instances[svc], r.Instance)
			}
		}
	}
}

// setWarm starts or ends the warm-up.
func (s *state) setWarm(warm bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.warm == warm {
		return
	}
	s.warm = warm
	s.meshView = nil
	s.notifyLocked()
}

// orphanKey names a remembered instance at one revision.
type orphanKey struct {
	service, id string
	rev         int64
}

// orphans returns the remembered instances that are not registered now.
func (s *state) orphans() map[orphanKey]struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[orphanKey]struct{}{}
	for svc, ins := range s.remembered {
		for id, r := range ins {
			if _, live := s.instances[svc][id]; !live {
				out[orphanKey{svc, id, r.rev}] = struct{}{}
			}
		}
	}
	return out
}

// runWarmUp ends the warm-up Config.WarmUp after the mirror is ready, then
// forgets, every period, the remembered instances that stayed
// unregistered since the period before.
func (s *Server) runWarmUp(ctx context.Context) {
	orphans := s.state.orphans()
	if len(orphans) > 0 {
		s.log.Info("warming up: keeping instances not registered yet in snapshots", "instances", len(orphans), "for", s.cfg.WarmUp)
	}
	t := time.NewTimer(s.cfg.WarmUp)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	s.state.setWarm(false)
	if len(orphans) > 0 {
		s.log.Info("warm-up over")
	}
	for {
		s.forget(ctx, orphans)
		orphans = s.state.orphans()
		t.Reset(s.cfg.WarmUp)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// forget deletes the remembered instances of was that are still
// unregistered and unchanged: guarded, so that one that registered
// meanwhile, here or on another server, stays remembered.
func (s *Server) forget(ctx context.Context, was map[orphanKey]struct{}) {
	now := s.state.orphans()
	n := 0
	for k := range was {
		if _, still := now[k]; !still {
			continue
		}
		err := s.store.Commit(ctx, []store.Op{
			{Key: instanceKey(k.service, k.id), IfRev: -1, Check: true},
			{Key: rememberedKey(k.service, k.id), Delete: true, IfRev: k.rev},
		})
		switch {
		case err == nil:
			n++
		case errors.Is(err, store.ErrConflict):
		default:
			if ctx.Err() == nil {
				s.log.Warn("forget an unregistered instance", "service", k.service, "instance", k.id, "err", err)
			}
			return
		}
	}
	if n > 0 {
		s.log.Info("forgot instances that did not re-register", "instances", n)
	}
}
