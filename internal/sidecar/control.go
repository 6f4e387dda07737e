package sidecar

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	grpcstatus "google.golang.org/grpc/status"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/stats"
	"github.com/trellis-mesh/trellis/internal/topology"
	"github.com/trellis-mesh/trellis/internal/xds"
)

// tokenCreds sends the service token with every RPC.
type tokenCreds string

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}
func (tokenCreds) RequireTransportSecurity() bool { return true }

// backoff returns the next retry delay: doubling from 500ms to 30s, with
// jitter so that proxies do not reconnect in lockstep after an outage.
func backoff(prev time.Duration) time.Duration {
	next := min(max(prev*2, 500*time.Millisecond), 30*time.Second)
	return next/2 + mrand.N(next/2+1)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// runControl keeps a stream to the control plane open until ctx ends. It
// picks a server of the --server list at random (every address of a DNS
// name is one), goes at once to another when the stream fails or the
// server asks it to move, and waits reconnectDelay only after a round in
// which no server took the stream. States are logged when they change,
// not per attempt.
func (p *Proxy) runControl(ctx context.Context, pool *l4.Pool) {
	entries := p.api.Servers()
	tried := map[string]bool{} // addresses tried since a stream last worked
	rounds := 0                // consecutive rounds in which none worked
	var lastErr error
	var logged logOnce
	for ctx.Err() == nil {
		ts, rerr := resolveTargets(ctx, entries, net.DefaultResolver.LookupHost)
		t, ok := pickTarget(ts, tried)
		if !ok {
			if lastErr == nil {
				lastErr = rerr
			}
			rounds++
			delay := reconnectDelay(rounds)
			code := grpcstatus.Code(lastErr)
			refused := code == codes.Unauthenticated || code == codes.PermissionDenied || code == codes.InvalidArgument
			switch {
			case refused && logged.changed("refused "+fmt.Sprint(lastErr)):
				p.log.Error("control plane refused this proxy; retrying", "err", lastErr, "servers", entries)
			case !refused && logged.changed("unreachable"):
				// Say what is served meanwhile: a proxy that never had a
				// configuration (none received, none saved) serves none.
				serving := "the last good configuration"
				if p.cur.Load() == nil {
					serving = "none yet: upstream calls fail until a server is reached"
				}
				p.log.Warn("no control plane server reachable", "serving", serving, "err", lastErr, "servers", entries)
			default:
				p.log.Debug("no control plane server took the stream", "err", lastErr, "retryIn", delay.Round(time.Millisecond))
			}
			sleepCtx(ctx, delay)
			clear(tried)
			lastErr = nil
			continue
		}
		tried[t.addr] = true
		start := time.Now()
		connected, moved, err := p.streamTo(ctx, t, pool)
		p.m.connected.Set(0)
		if ctx.Err() != nil {
			return
		}
		if connected && (moved != "" || time.Since(start) >= stableStream) {
			// A working stream ended: another server at once.
			rounds, lastErr = 0, nil
			clear(tried)
			tried[t.addr] = true
			logged.changed("moving")
			if moved != "" {
				p.log.Info("control plane stream ended; moving to another server", "server", t.entry, "address", t.addr, "reason", moved)
			} else {
				p.log.Warn("control plane stream failed; moving to another server", "server", t.entry, "address", t.addr, "err", err)
			}
			continue
		}
		lastErr = fmt.Errorf("%s (%s): %w", t.entry, t.addr, err)
		p.log.Debug("control plane server did not take the stream", "server", t.entry, "address", t.addr, "err", err)
	}
}

// streamTo runs one stream to t, on a connection of its own, and reports
// whether the server took it (sent anything), and, when the server asked
// the proxy to move or went away cleanly, why.
func (p *Proxy) streamTo(ctx context.Context, t target, pool *l4.Pool) (connected bool, moved string, err error) {
	host, _, _ := net.SplitHostPort(t.entry)
	tlsCfg := p.api.TLSConfig()
	tlsCfg.ServerName = host // the certificate names the list's host, not the address dialed
	tlsCfg.NextProtos = []string{xds.ALPN, "h2"}
	conn, err := grpc.NewClient("passthrough:///"+t.addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithPerRPCCredentials(tokenCreds(p.token)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: xds.ClientPingInterval, Timeout: 10 * time.Second}),
		// The connection lives for one stream: gRPC's reconnection
		// backoff never runs long enough to matter.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: grpcbackoff.DefaultConfig, MinConnectTimeout: connectTimeout}),
	)
	if err != nil {
		return false, "", err
	}
	defer conn.Close()
	// The watcher is waited for after the stream's context ends
	// (deferred calls run last first).
	var watch sync.WaitGroup
	defer watch.Wait()
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watch.Go(func() { watchConn(sctx, conn, cancel) })
	p.api.Prefer(t.entry) // certificates from the same server
	p.log.Debug("dialing control plane", "server", t.entry, "address", t.addr)
	var got atomic.Bool
	err = p.stream(sctx, observedADS{discoveryv3.NewAggregatedDiscoveryServiceClient(conn), &got}, pool)
	if ctx.Err() == nil && errors.Is(context.Cause(sctx), errServerGoingAway) {
		return got.Load(), errServerGoingAway.Error(), err
	}
	if why, ok := xds.MoveReason(err); ok {
		return got.Load(), why, err
	}
	return got.Load(), "", err
}

func (p *Proxy) stream(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient, pool *l4.Pool) error {
	// recv is waited for after sctx ends (deferred calls run last
	// first): the stream's end ends its Recv.
	var recv sync.WaitGroup
	defer recv.Wait()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := ads.StreamAggregatedResources(sctx)
	if err != nil {
		return err
	}
	version, nonce := "", ""
	if a := p.cur.Load(); a != nil {
		version = a.snap.Version
	}
	send := func(withNode bool, errDetail string) error {
		req := &discoveryv3.DiscoveryRequest{TypeUrl: xds.SnapshotType, VersionInfo: version, ResponseNonce: nonce}
		if withNode {
			r := *p.reg.Load()
			if c := p.src.Certificate(); c != nil {
				r.SVIDExpiresAt = c.Leaf.NotAfter
			}
			req.Node = r.Node()
		}
		if errDetail != "" {
			req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: errDetail}
		}
		return st.Send(req)
	}
	if err := send(true, ""); err != nil {
		return err
	}
	resps := make(chan *discoveryv3.DiscoveryResponse)
	errc := make(chan error, 1)
	recv.Go(func() {
		for {
			r, err := st.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case resps <- r:
			case <-sctx.Done():
				return
			}
		}
	})
	// Traffic summaries go on this stream at multiples of the stats
	// interval; what was counted while no stream was open is not sent.
	sum := &summarizer{p: p}
	sum.baseline(time.Now())
	tick := time.NewTimer(p.nextSummary(time.Now()))
	defer tick.Stop()
	connected := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return err
		case <-p.regCh:
			if err := send(true, ""); err != nil {
				return err
			}
		case now := <-tick.C:
			tick.Reset(p.nextSummary(time.Now()))
			if err := p.sendSummary(st, sum.take(now)); err != nil {
				return err
			}
		case r := <-resps:
			if !connected {
				connected = true
				p.m.connected.Set(1)
				p.log.Info("connected to control plane", "server", p.api.Host())
			}
			if r.GetTypeUrl() == stats.SummaryType {
				// Not a snapshot: the server refused a summary.
				p.log.Warn("control plane refused a traffic summary", "reason", xds.RefusalFrom(r))
				continue
			}
			nonce = r.GetNonce()
			// A patch applies to the snapshot in use; a whole
			// snapshot needs none.
			var cur *topology.Snapshot
			if a := p.cur.Load(); a != nil {
				cur = a.snap
			}
			snap, err := xds.Decode(r, cur)
			if err == nil && snap.Service != p.cfg.Service {
				err = fmt.Errorf("snapshot is for service %q", snap.Service)
			}
			if err == nil {
				err = p.apply(snap)
			}
			if err != nil {
				p.m.snapshots.WithLabelValues("rejected").Inc()
				p.log.Error("rejected snapshot; keeping the last good one", "version", r.GetVersionInfo(), "err", err)
				if err := send(false, err.Error()); err != nil {
					return err
				}
				continue
			}
			version = snap.Version
			p.m.snapshots.WithLabelValues("applied").Inc()
			p.log.Info("applied snapshot", "version", version, "upstreams", len(snap.Upstreams))
			keep := map[string]l4.Endpoint{}
			for _, eps := range p.cur.Load().endpoints {
				for _, e := range eps {
					keep[e.Key()] = e
				}
			}
			pool.Forget(keep)
			if p.onApply != nil {
				p.onApply()
			}
			p.persist()
			if p.src.Certificate() != nil {
				p.markReady()
			}
			if err := send(false, ""); err != nil {
				return err
			}
		}
	}
}

// sendSummary sends s (nil: nothing to send) on the stream.
func (p *Proxy) sendSummary(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, s *stats.Summary) error {
	if s == nil {
		return nil
	}
	req, err := xds.SummaryRequest(s)
	if err != nil {
		// Bound keeps a summary far under the limit: a bug, not a reason
		// to drop the stream.
		p.log.Error("encode traffic summary", "err", err)
		return nil
	}
	return st.Send(req)
}

// runCertificates obtains the first SVID and renews it at half-life, keeping
// the current one (and retrying) while the CA is unreachable.
func (p *Proxy) runCertificates(ctx context.Context) {
	var delay time.Duration
	for ctx.Err() == nil {
		if c := p.src.Certificate(); c != nil {
			if delay == 0 {
				t := time.NewTimer(time.Until(time.Unix(0, p.renewAt.Load())))
				select {
				case <-ctx.Done():
				case <-t.C:
				case <-p.renewSoon:
				}
				t.Stop()
			}
			if ctx.Err() != nil {
				return
			}
		}
		if err := p.renew(ctx); err != nil {
			p.m.renewals.WithLabelValues("error").Inc()
			delay = backoff(delay)
			if c := p.src.Certificate(); c != nil {
				delay = min(delay, max(time.Until(c.Leaf.NotAfter)/4, time.Second))
			}
			p.log.Warn("certificate renewal failed; keeping the current one", "err", err, "retryIn", delay.Round(time.Millisecond))
			sleepCtx(ctx, delay)
			continue
		}
		delay = 0
	}
}

// renew makes a fresh key, has the CA sign it and installs the result. The
// key never leaves this process except into the 0600 state file.
func (p *Proxy) renew(ctx context.Context) error {
	cert, keyPEM, err := p.issue(ctx, func(ctx context.Context, csrPEM []byte) (v1.Signed, error) {
		return p.api.Sign(ctx, p.cfg.Service, csrPEM)
	})
	if err != nil {
		return err
	}
	id, err := identity.FromCertificate(cert.Leaf)
	if err != nil || id.Service() != p.cfg.Service {
		return fmt.Errorf("CA returned a certificate for %v (%v), want service %s", id, err, p.cfg.Service)
	}
	p.setCredential(cert, keyPEM)
	// The registration carries the certificate's expiry: send it again.
	select {
	case p.regCh <- struct{}{}:
	default:
	}
	p.m.renewals.WithLabelValues("ok").Inc()
	p.log.Info("certificate issued", "id", id.String(), "expires", cert.Leaf.NotAfter.Format(time.RFC3339))
	p.persist()
	if p.cur.Load() != nil {
		p.markReady()
	}
	return nil
}

// issue makes a fresh P-256 key, has sign get a certificate for it from a
// CSR, and returns the pair and the key's PEM. The key stays in this
// process.
func (p *Proxy) issue(ctx context.Context, sign func(context.Context, []byte) (v1.Signed, error)) (*tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	signed, err := sign(rctx, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))
	if err != nil {
		return nil, nil, fmt.Errorf("sign: %w", err)
	}
	keyPEM, err := certs.EncodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := certs.KeyPair([]byte(signed.ChainPEM), keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("signed certificate: %w", err)
	}
	return cert, keyPEM, nil
}

// persist asks runPersist to save the current state. It never blocks: a
// request made while one is pending is the same request.
func (p *Proxy) persist() {
	select {
	case p.persistCh <- struct{}{}:
	default:
	}
}

// runPersist is the one writer of the state file: it saves the current
// certificate, key and snapshot on each persist request until ctx ends,
// then saves once more if a request is pending. One writer means two
// saves never race to rename their files (an older state landing last);
// reading the certificate and its key as one value means a save never
// pairs a key with another key's certificate.
func (p *Proxy) runPersist(ctx context.Context) {
	for {
		select {
		case <-p.persistCh:
			p.saveNow()
		case <-ctx.Done():
			select {
			case <-p.persistCh:
				p.saveNow()
			default:
			}
			return
		}
	}
}

// saveNow writes the current certificate, key and snapshot when all exist.
func (p *Proxy) saveNow() {
	a := p.cur.Load()
	cr := p.cred.Load()
	if a == nil || cr == nil {
		return
	}
	var chain []byte
	for _, der := range cr.cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	st := persisted{ChainPEM: string(chain), KeyPEM: string(cr.keyPEM), Snapshot: a.snap}
	if r := p.reg.Load(); r != nil {
		st.PublicPort = r.Port
	}
	if err := saveState(p.cfg.StateDir, st); err != nil {
		p.log.Warn("persist state", "dir", p.cfg.StateDir, "err", err)
	}
}
