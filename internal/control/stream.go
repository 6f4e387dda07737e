package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/stats"
	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// adsServer serves the aggregated discovery stream to proxies.
type adsServer struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	s *Server
}

// proxyStream is the server's side of one connected proxy.
type proxyStream struct {
	s      *Server
	reg    xds.Registration
	lease  store.LeaseID
	status v1.ProxyStatus
	nonce  int
	// sentRoots are the fingerprints of the roots in the last snapshot
	// sent; an ACK of it makes them the status's AckedRoots.
	sentRoots []string
	// pacer paces the stream's traffic summaries (summary).
	pacer summaryPacer
	// patches: the proxy listed xds.FeaturePatch. Owned by push and wait
	// (one goroutine), like the fields below.
	patches bool
	// lastWhole is the nonce of the last whole snapshot sent; needWhole
	// says the next push must be whole (the proxy rejected one), and
	// resend that it must go now, even with the same version.
	lastWhole int
	needWhole bool
	resend    bool
	// regChanged: handle took a registration update, which may change
	// the stream's view.
	regChanged bool

	// The registration this stream holds (registration.go): holder names
	// the stream in the record, regRev is the record's revision that
	// guards every write, adopted says the lease was taken over from an
	// earlier stream. moved is set once another stream took it over (or
	// its lease ended), stopLease then stops renewing the lease and ends
	// the stream with the cause.
	holder  string
	regRev  int64
	adopted bool
	moved   atomic.Bool
	// sentAway is set when this server ends the stream for the proxy to
	// go to another (failover.go): deregister leaves the registration.
	sentAway  atomic.Bool
	stopLease func(cause error)
	// st is the status as written to the store (statusflush.go).
	st streamStatus
}

// StreamAggregatedResources implements the ADS stream. The first request
// must carry the proxy's registration in its node; the token in the stream's
// metadata must allow the registered service.
func (a *adsServer) StreamAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	s := a.s
	ctx := stream.Context()
	if err := s.streamRefusal(); err != nil {
		return err // stopping or cut off from the store (failover.go)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	var secret string
	if v := md.Get("authorization"); len(v) > 0 {
		secret = bearer(v[0])
	}
	peer := ""
	if pr, ok := grpcpeer.FromContext(ctx); ok {
		peer = pr.Addr.String()
	}
	p, err := s.authenticate(ctx, secret)
	if err == nil {
		// Registering needs the store anyway: asking it costs a stale
		// server nothing more.
		err = s.tokenStillStored(ctx, p)
	}
	if err != nil {
		s.logRefusal("proxy stream refused", "remote", peer, "token", p, "reason", err.Error())
		return status.Error(codes.Unauthenticated, errUnauthenticated.Error())
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	reg, err := xds.FromNode(first.GetNode())
	if err != nil {
		s.logRefusal("proxy stream refused", "remote", peer, "token", p, "reason", "invalid registration: "+err.Error())
		return status.Errorf(codes.InvalidArgument, "registration: %v", err)
	}
	if !p.mayActAs(reg.Service) {
		s.logRefusal("proxy stream refused", "remote", peer, "token", p, "reason", fmt.Sprintf("token may not register service %q", reg.Service))
		return status.Errorf(codes.PermissionDenied, "token may not register service %q", reg.Service)
	}
	ps := &proxyStream{s: s, reg: reg, patches: slices.Contains(first.GetNode().GetClientFeatures(), xds.FeaturePatch)}
	regCtx, endReg := s.whileServing(ctx) // failover.go
	err = s.admitRegister(regCtx, ps, p.token.ID)
	endReg()
	if errors.Is(err, errInstanceHeld) {
		s.logRefusal("proxy stream refused", "remote", peer, "token", p, "instance", reg.Instance, "service", reg.Service, "reason", err.Error())
		return status.Errorf(codes.AlreadyExists, "instance %q of %q: %v", reg.Instance, reg.Service, err)
	} else if err != nil {
		if why, _ := s.movers.current(); why != "" {
			// Cut short: what registration wrote, if anything, is the
			// proxy's to adopt on the server it goes to.
			return xds.MoveStatus(why)
		}
		return status.Errorf(codes.Unavailable, "register: %v", err)
	}
	log := s.log.With("instance", reg.Instance, "service", reg.Service)
	log.Info("proxy connected", "address", reg.Address, "port", reg.Port, "upstreams", reg.Upstreams, "adopted", ps.adopted)
	s.metrics.proxies.Inc()
	defer s.metrics.proxies.Dec()
	defer ps.deregister(ctx, log)

	// The lease lives as long as the stream; losing it (the store was
	// unreachable past the TTL) ends the stream so the proxy re-registers.
	// Another stream taking the registration over ends it too (lose).
	// The lease is renewed with every other stream's (store.Hold): no
	// goroutine of its own.
	leaseLost := make(chan error, 1)
	report := func(err error) {
		select {
		case leaseLost <- err:
		default: // the first reason is the one that ends the stream
		}
	}
	release := s.store.Hold(ps.lease, s.cfg.RegistrationGrace, report)
	defer release()
	var stopOnce sync.Once
	ps.stopLease = func(cause error) {
		stopOnce.Do(func() {
			release()
			report(cause)
		})
	}

	reqs := make(chan *discoveryv3.DiscoveryRequest)
	recvErr := make(chan error, 1)
	// Ends when the stream does, which is after this handler returns:
	// Run, not the handler, waits for it.
	s.goStream(func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- r:
			case <-ctx.Done():
				return
			}
		}
	})

	// The push loop runs on its own, and the token is watched here: a
	// Send that blocks on a proxy that stopped reading must not keep a
	// revoked or expired token's stream, and its registration, alive.
	// Returning ends the RPC, which unblocks that Send.
	pushCtx, stopPush := context.WithCancel(ctx)
	// Cancelled before deregister runs: the loop's store writes use
	// pushCtx, so none lands after the lease is revoked. The goroutine
	// itself ends with the RPC, whose end fails its Send or Recv.
	defer stopPush()
	pushed := make(chan error, 1)
	s.goStream(func() { pushed <- ps.push(pushCtx, stream, reqs, recvErr, leaseLost, log) })

	age, gone := s.streamMove() // failover.go
	defer age.Stop()
	var expired <-chan time.Time
	if p.token.ExpiresAt != nil {
		t := time.NewTimer(time.Until(*p.token.ExpiresAt))
		defer t.Stop()
		expired = t.C
	}
	for {
		tokens := s.state.TokensChanged()
		select {
		case err := <-pushed:
			return err
		case <-age.C:
			return ps.sendAway(xds.MoveStatus("stream reached its maximum age; rebalancing"), log)
		case <-gone:
			return ps.sendAway(s.moveStatus(), log)
		case <-tokens:
			if err := s.tokenStands(ctx, p); err != nil {
				log.Info("proxy stream ended", "token", p, "reason", err.Error())
				return status.Error(codes.Unauthenticated, err.Error())
			}
		case <-expired:
			log.Info("proxy stream ended", "token", p, "reason", "token expired")
			return status.Error(codes.Unauthenticated, "token expired")
		}
	}
}

// sendAway ends the stream with err, a status that moves the proxy to
// another server. Sent away, not gone: the registration is left for the
// stream the proxy opens on another server to adopt.
func (ps *proxyStream) sendAway(err error, log *slog.Logger) error {
	ps.sentAway.Store(true)
	log.Info("proxy stream ended", "reason", err.Error())
	return err
}

// errStreamDone is wait's word for a stream that ended cleanly.
var errStreamDone = errors.New("stream done")

// push sends the proxy a snapshot whenever its content changes, and takes
// its ACKs, NACKs and registration updates, until the stream or its lease
// ends. The snapshot is its view's, shared with every stream of the view
// (snapcache.go); a proxy that takes patches gets, after the first whole
// snapshot, only the resources that changed since the last one sent.
func (ps *proxyStream) push(ctx context.Context, stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer,
	reqs <-chan *discoveryv3.DiscoveryRequest, recvErr, leaseLost <-chan error, log *slog.Logger) error {
	s := ps.s
	var v *view
	defer func() {
		if v != nil {
			s.snaps.release(v)
		}
	}()
	var sent *computed
	for {
		// A registration update may bring other upstreams or another
		// network: another view.
		if v == nil || ps.regChanged {
			ps.regChanged = false
			if _, key := viewOf(ps.reg); v == nil || v.key != key {
				nv := s.snaps.acquire(ps.reg)
				if v != nil {
					s.snaps.release(v)
				}
				v = nv
			}
		}
		// Woken when the view's snapshot changes (snapcache.go), not at
		// every change of the mesh.
		changed := v.changes()
		c := s.snaps.current(v, s.state.mesh)
		if sent == nil || ps.resend || c.snap.Version != sent.snap.Version {
			ps.nonce++
			var resp *xds.Encoded
			var err error
			patched := false
			if sent != nil && ps.patches && !ps.needWhole {
				resp, patched, err = c.patchFrom(sent)
			}
			if err == nil && !patched {
				resp, err = c.whole()
				ps.lastWhole, ps.needWhole = ps.nonce, false
			}
			if err != nil {
				return status.Errorf(codes.Internal, "snapshot %s: %v", c.snap.Version, err)
			}
			ps.resend = false
			if err := stream.SendMsg(resp.WithNonce(strconv.Itoa(ps.nonce))); err != nil {
				return err
			}
			if sent == nil || c.snap.RootsPEM != sent.snap.RootsPEM {
				ps.sentRoots = c.roots
			}
			sent = c
			s.metrics.pushes.Inc()
			if patched {
				s.snaps.patches.Inc()
			}
			ps.status.SentVersion = c.snap.Version
			ps.status.Paths = c.paths
			ps.writeStatus(ctx)
		}
		if err := ps.wait(ctx, stream, changed, reqs, recvErr, leaseLost, log); errors.Is(err, errStreamDone) {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// rejected notes a NACK: the proxy kept a snapshot the server no longer
// knows, so the next push is whole; and when it rejected a patch (which
// it may do only because it holds another version than the patch's
// base), the whole snapshot goes now. A rejected whole snapshot is not
// sent again until the mesh changes: the same content would fail the same
// way.
func (ps *proxyStream) rejected(r *discoveryv3.DiscoveryRequest) {
	if r.GetErrorDetail() == nil || r.GetResponseNonce() == "" {
		return
	}
	ps.needWhole = true
	if n, err := strconv.Atoi(r.GetResponseNonce()); err == nil && n > ps.lastWhole && n <= ps.nonce {
		ps.resend = true
	}
}

// wait returns when the snapshot may have changed: the mesh changed, or
// an ACK, a NACK or a registration update came. Traffic summaries are
// filed meanwhile: they change no snapshot. nil means "compute again";
// errStreamDone a clean end (ctx done, the proxy gone), another error a
// failed one.
func (ps *proxyStream) wait(ctx context.Context, stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer,
	changed <-chan struct{}, reqs <-chan *discoveryv3.DiscoveryRequest, recvErr, leaseLost <-chan error, log *slog.Logger) error {
	for {
		select {
		case <-changed:
			return nil
		case r := <-reqs:
			if r.GetTypeUrl() == stats.SummaryType {
				if err := ps.summary(stream, r); err != nil {
					return err
				}
				continue
			}
			ps.handle(ctx, r, log)
			ps.rejected(r)
			return nil
		case err := <-recvErr:
			if errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
				return errStreamDone
			}
			return err
		case err := <-leaseLost:
			if ctx.Err() != nil {
				return errStreamDone
			}
			log.Warn("registration lease lost; closing stream", "err", err)
			return status.Error(codes.Unavailable, "registration lease lost")
		case <-ctx.Done():
			return errStreamDone
		}
	}
}

// handle processes an ACK, a NACK or a registration update.
func (ps *proxyStream) handle(ctx context.Context, r *discoveryv3.DiscoveryRequest, log interface {
	Warn(string, ...any)
	Info(string, ...any)
}) {
	if r.GetNode() != nil {
		reg, err := xds.FromNode(r.GetNode())
		switch {
		case err != nil:
			log.Warn("ignore invalid registration update", "err", err)
		case reg.Instance != ps.reg.Instance || reg.Service != ps.reg.Service:
			log.Warn("ignore registration update for another instance", "instance", reg.Instance)
		case reg.Healthy != ps.reg.Healthy || reg.Address != ps.reg.Address || reg.Port != ps.reg.Port || reg.Version != ps.reg.Version:
			ps.reg, ps.regChanged = reg, true
			if err := ps.putInstance(ctx); err != nil {
				log.Warn("update registration", "err", err)
			} else {
				log.Info("instance updated", "healthy", reg.Healthy)
			}
		}
		if err == nil && reg.Instance == ps.reg.Instance && reg.Service == ps.reg.Service && ps.setNodeInfo(reg.NodeInfo) {
			ps.reg.NodeInfo = reg.NodeInfo
			if r.GetResponseNonce() == "" {
				ps.writeStatus(ctx)
			}
		}
	}
	if r.GetResponseNonce() == "" {
		return
	}
	if d := r.GetErrorDetail(); d != nil {
		ps.status.Error = d.GetMessage()
		log.Warn("proxy rejected snapshot", "version", ps.status.SentVersion, "err", d.GetMessage())
	} else {
		ps.status.AckedVersion = r.GetVersionInfo()
		ps.status.Error = ""
		if ps.status.AckedVersion == ps.status.SentVersion {
			ps.status.AckedRoots = ps.sentRoots
		}
	}
	ps.writeStatus(ctx)
}

// setNodeInfo copies what the proxy says of its host and certificate into
// its status, and reports whether that changed it.
func (ps *proxyStream) setNodeInfo(n xds.NodeInfo) bool {
	var exp *time.Time
	if !n.SVIDExpiresAt.IsZero() {
		t := n.SVIDExpiresAt.UTC()
		exp = &t
	}
	same := ps.status.Node == n.NodeName && (exp == nil) == (ps.status.SVIDExpiresAt == nil) &&
		(exp == nil || exp.Equal(*ps.status.SVIDExpiresAt))
	ps.status.Node, ps.status.SVIDExpiresAt = n.NodeName, exp
	return !same
}

// putInstance writes the instance as the proxy now describes it.
func (ps *proxyStream) putInstance(ctx context.Context) error {
	return ps.commitHeld(ctx, ps.instanceOps(ps.lease))
}

// deregister deletes the instance's records and revokes its lease when the
// proxy went away. When this server is the one stopping, or another stream
// holds the registration now, the lease is left to the proxy's next stream:
// its endpoint must not blink out.
func (ps *proxyStream) deregister(streamCtx context.Context, log interface{ Info(string, ...any) }) {
	ps.closeStatus()
	if ps.s.stopping.Load() {
		log.Info("proxy stream closed by server shutdown; registration left to the next server")
		return
	}
	if ps.moved.Load() {
		log.Info("proxy stream closed; registration held by another stream, or expired")
		return
	}
	if ps.sentAway.Load() {
		log.Info("proxy sent to another server; registration left for it to adopt")
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(streamCtx), 5*time.Second)
	defer cancel()
	if err := ps.unregister(ctx); errors.Is(err, errRegistrationMoved) {
		log.Info("proxy disconnected; registration held by another stream, or expired")
		return
	} else if err != nil {
		log.Info("proxy disconnected; registration will expire", "err", fmt.Sprint(err))
		return
	}
	log.Info("proxy disconnected; deregistered")
}
