package control

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/topology"
)

// bundleRecord is what /ca/bundle holds.
type bundleRecord struct {
	TrustDomain string `json:"trustDomain"`
	RootsPEM    string `json:"roots"`
}

// tokenRecord is what /tokens/<hash> holds: never the secret.
type tokenRecord struct {
	v1.Token
	// rev is the record's store revision, for writes that must not bring
	// back a token deleted meanwhile.
	rev int64
}

// state mirrors the store in memory. Readers take a consistent copy under
// the lock; every change closes the current changed channel, waking every
// stream that waits on it.
type state struct {
	log *slog.Logger

	mu        sync.RWMutex
	resources map[string]map[string]v1.Resource // kind -> name
	instances map[string]map[string]v1.Instance // service -> id
	status    map[string]v1.ProxyStatus
	tokens    map[string]tokenRecord // hash -> record
	bundle    bundleRecord
	issuer    *issuerRecord // nil: no rotation was ever made
	signer    *signerRecord // nil until a server stored the shared CA
	// meshView is the topology input, built once per relevant change and
	// shared read-only by every stream; nil when stale.
	meshView *topology.Mesh
	changed  chan struct{}
	// tokensChanged is closed, and replaced, when any token record is
	// written or deleted: streams then check that theirs still stands.
	tokensChanged chan struct{}
	ready         chan struct{}
	readyOnce     sync.Once

	// sessions are the dashboard's, by the hash of their ID.
	sessions map[string]sessionRecord
	// servers are the running servers, by ID (peer.go).
	servers map[string]serverRecord

	// watching is set while the watch runs on a fresh list; lastContact
	// (unix ns) is when the store last answered, lastErr why it did not
	// (stale.go).
	watching    atomic.Bool
	lastContact atomic.Int64
	lastErr     atomic.Pointer[string]
	// remembered are the instances last registered, by service and ID,
	// and warm says whether those not registered now are kept in
	// snapshots (warmup.go).
	remembered map[string]map[string]rememberedInstance
	warm       bool
}

func newState(log *slog.Logger) *state {
	s := &state{log: log, changed: make(chan struct{}), tokensChanged: make(chan struct{}), ready: make(chan struct{})}
	s.reset()
	return s
}

func (s *state) reset() {
	s.resources = map[string]map[string]v1.Resource{}
	s.instances = map[string]map[string]v1.Instance{}
	s.status = map[string]v1.ProxyStatus{}
	s.tokens = map[string]tokenRecord{}
	s.sessions = map[string]sessionRecord{}
	s.servers = map[string]serverRecord{}
	s.remembered = map[string]map[string]rememberedInstance{}
	s.bundle = bundleRecord{}
	s.issuer = nil
	s.signer = nil
}

// Changed returns a channel closed at the next change.
func (s *state) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

// TokensChanged returns a channel closed at the next token change.
func (s *state) TokensChanged() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.tokensChanged
}

func (s *state) notifyTokensLocked() {
	close(s.tokensChanged)
	s.tokensChanged = make(chan struct{})
}

// run mirrors the store until ctx ends, re-listing after any watch error.
func (s *state) run(ctx context.Context, st store.Store) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		kvs, rev, err := st.List(ctx, "/")
		if err != nil {
			s.storeFailed(err)
			s.log.Warn("list store", "err", err)
			sleep(ctx, backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		s.mu.Lock()
		s.reset()
		for _, kv := range kvs {
			s.applyLocked(store.Event{Type: store.Put, KV: kv})
		}
		s.meshView = nil
		s.notifyLocked()
		s.notifyTokensLocked() // one may have gone while the watch was down
		s.mu.Unlock()
		s.contact(time.Now())
		s.watching.Store(true)
		s.readyOnce.Do(func() { close(s.ready) })
		for b := range st.Watch(ctx, "/", rev) {
			if b.Err != nil {
				s.watching.Store(false)
				s.storeFailed(b.Err)
				s.log.Warn("store watch ended; re-listing", "err", b.Err)
				break
			}
			s.contact(time.Now())
			s.mu.Lock()
			relevant := false
			for _, ev := range b.Events {
				relevant = s.applyLocked(ev) || relevant
			}
			// Proxy status and tokens do not change any snapshot: waking
			// every stream for them would cost each ACK a round over all
			// proxies.
			if relevant {
				s.meshView = nil
				s.notifyLocked()
			}
			s.mu.Unlock()
		}
		s.watching.Store(false)
	}
}

func (s *state) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// applyLocked mirrors one event and reports whether it can change a
// proxy's snapshot.
func (s *state) applyLocked(ev store.Event) bool {
	key := ev.KV.Key
	del := ev.Type == store.Delete
	switch {
	case strings.HasPrefix(key, keyResources):
		kind, name, ok := splitKey(key, keyResources)
		if !ok {
			return false
		}
		if err := mirrorNested(s.resources, kind, name, ev); err != nil {
			s.log.Error("skip undecodable resource in store", "key", key, "err", err)
			return false
		}
		return true
	case strings.HasPrefix(key, keyInstances):
		svc, id, ok := splitKey(key, keyInstances)
		if !ok {
			return false
		}
		if err := mirrorNested(s.instances, svc, id, ev); err != nil {
			s.log.Error("skip undecodable instance in store", "key", key, "err", err)
			return false
		}
		return true
	case strings.HasPrefix(key, keyStatus):
		id := strings.TrimPrefix(key, keyStatus) // service/instance
		if del {
			delete(s.status, id)
			return false
		}
		var ps v1.ProxyStatus
		if json.Unmarshal(ev.KV.Value, &ps) == nil {
			s.status[id] = ps
		}
	case strings.HasPrefix(key, keyTokens):
		h := strings.TrimPrefix(key, keyTokens)
		s.notifyTokensLocked()
		if del {
			delete(s.tokens, h)
			return false
		}
		var t tokenRecord
		if json.Unmarshal(ev.KV.Value, &t) == nil {
			t.rev = ev.KV.Rev
			s.tokens[h] = t
		}
	case strings.HasPrefix(key, keySessions):
		h := strings.TrimPrefix(key, keySessions)
		delete(s.sessions, h)
		var rec sessionRecord
		if !del && json.Unmarshal(ev.KV.Value, &rec) == nil {
			s.sessions[h] = rec
		}
	case key == keyIssuer:
		// Not part of any snapshot, but every server follows it: waking
		// the streams once per rotation step is cheap.
		s.issuer = nil
		if !del {
			var rec issuerRecord
			if err := json.Unmarshal(ev.KV.Value, &rec); err != nil {
				s.log.Error("skip undecodable issuer record in store", "err", err)
				return false
			}
			rec.rev = ev.KV.Rev
			s.issuer = &rec
		}
		return true
	case key == keySigner:
		// Every server follows it (followSigner); its key stays sealed
		// in the mirror.
		s.signer = nil
		if !del {
			rec, err := decodeSigner(ev.KV)
			if err != nil {
				s.log.Error("skip undecodable shared CA record in store", "err", err)
				return false
			}
			s.signer = rec
		}
		return true
	case strings.HasPrefix(key, keyRemembered):
		return s.applyRememberedLocked(ev)
	case strings.HasPrefix(key, keyServers):
		id := strings.TrimPrefix(key, keyServers)
		delete(s.servers, id)
		var rec serverRecord
		if !del && json.Unmarshal(ev.KV.Value, &rec) == nil && rec.ID == id {
			s.servers[id] = rec
		}
	case key == keyBundle:
		if !del {
			_ = json.Unmarshal(ev.KV.Value, &s.bundle)
		}
		return true
	}
	return false
}

// mirrorNested applies a put (JSON) or delete of m[a][b].
func mirrorNested[T any](m map[string]map[string]T, a, b string, ev store.Event) error {
	if ev.Type == store.Delete {
		delete(m[a], b)
		return nil
	}
	var v T
	if err := json.Unmarshal(ev.KV.Value, &v); err != nil {
		return err
	}
	if m[a] == nil {
		m[a] = map[string]T{}
	}
	m[a][b] = v
	return nil
}

// mesh returns what topology needs, consistent and shared: callers must
// not modify it. It is rebuilt at most once per relevant change.
func (s *state) mesh() *topology.Mesh {
	s.mu.RLock()
	m := s.meshView
	s.mu.RUnlock()
	if m != nil {
		return m
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.meshView == nil {
		s.meshView = s.buildMeshLocked()
	}
	return s.meshView
}

func (s *state) buildMeshLocked() *topology.Mesh {
	m := &topology.Mesh{
		TrustDomain: s.bundle.TrustDomain,
		RootsPEM:    s.bundle.RootsPEM,
		Services:    map[string]*v1.ServiceSpec{},
		Instances:   map[string][]v1.Instance{},
	}
	if r, ok := s.resources[v1.KindMesh][v1.MeshName]; ok {
		m.Mesh = r.Mesh
	}
	for name, r := range s.resources[v1.KindService] {
		m.Services[name] = r.Service
	}
	for _, r := range s.resources[v1.KindIntention] {
		m.Intentions = append(m.Intentions, *r.Intention)
	}
	m.Routes = map[string]*v1.RouteSpec{}
	for name, r := range s.resources[v1.KindRoute] {
		m.Routes[name] = r.Route
	}
	m.Gateways = map[string]*v1.GatewaySpec{}
	for name, r := range s.resources[v1.KindGateway] {
		m.Gateways[name] = r.Gateway
	}
	for svc, ins := range s.instances {
		for _, in := range ins {
			m.Instances[svc] = append(m.Instances[svc], in)
		}
	}
	s.addRememberedLocked(m)
	return m
}

// signerRecord returns the shared CA's record, or nil.
func (s *state) signerRecord() *signerRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.signer
}

// issuerRecord returns the rotation record, or nil.
func (s *state) issuerRecord() *issuerRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.issuer
}

func (s *state) token(hash string) (tokenRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.tokens[hash]
	return t, ok
}

// setSession puts a session's record in the mirror, or (nil) takes it
// out, ahead of the watch: a login or logout holds on the server that
// made it from the next request on.
func (s *state) setSession(hash string, rec *sessionRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rec == nil {
		delete(s.sessions, hash)
		return
	}
	s.sessions[hash] = *rec
}

// session returns a dashboard session's record from the mirror, and how
// many sessions it holds.
func (s *state) session(hash string) (sessionRecord, bool, int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	rec, ok := s.sessions[hash]
	return rec, ok, len(s.sessions)
}

func (s *state) listResources(kind string) []v1.Resource {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]v1.Resource, 0, len(s.resources[kind]))
	for _, r := range s.resources[kind] {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (s *state) resource(kind, name string) (v1.Resource, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.resources[kind][name]
	return r, ok
}

func (s *state) listInstances(service string) []v1.Instance {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []v1.Instance
	for svc, ins := range s.instances {
		if service != "" && svc != service {
			continue
		}
		for _, in := range ins {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *state) listStatus() []v1.ProxyStatus {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]v1.ProxyStatus, 0, len(s.status))
	for _, st := range s.status {
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Instance < out[j].Instance })
	return out
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
