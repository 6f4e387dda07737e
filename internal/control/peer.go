package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/stats"
)

// Servers share traffic summaries (issue 21): each server registers
// under /servers/<id>, with a lease that ends with it, the address its
// peers reach its API at; once per stats interval it pushes the slots of
// its own proxies' summaries that changed to every other server, over the
// API port, as a TLS client with its serving certificate (the server's
// SPIFFE ID, signed by the mesh CA). A peer's push is filed apart from the
// server's own (stats.Ring.Merge) and never pushed on, so /v1/stats on
// any server counts every proxy once. The store holds one key per
// server, never per proxy or per summary.
//
// Goroutines: runPeering (one of Run's) owns one pusher per peer, which
// it starts when the peer registers and cancels when its key goes; each
// pusher owns its peer's cursor and has at most one push in flight,
// bounded by peerTimeout, so a slow or gone peer delays only its own
// pushes. registerServer keeps the server's key.

const (
	// peerSNI is the server name a server dials its peers with. The API
	// listener asks for a client certificate only for it, so that
	// browsers and the CLI are never asked for one.
	peerSNI = "peer.trellis.invalid"
	// peerTimeout bounds one push.
	peerTimeout = 5 * time.Second
	// pushPath is the API path peers push to.
	pushPath = "/v1/peer/summaries"
)

// serverRecord is what /servers/<id> holds.
type serverRecord struct {
	ID string `json:"id"`
	// Address is where peers reach the server's API (host:port).
	Address string `json:"address"`
}

// newServerID returns a new server ID: a fresh one each start, so that
// a restarted server's slots never replace its former self's.
func newServerID() string {
	var b [8]byte
	rand.Read(b[:])
	return "s-" + hex.EncodeToString(b[:])
}

type peerMetrics struct {
	pushes   *prometheus.CounterVec
	received *prometheus.CounterVec
	peers    prometheus.Gauge
}

func newPeerMetrics(reg prometheus.Registerer) *peerMetrics {
	m := &peerMetrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_control_peer_pushes_total", Help: "Pushes of traffic summaries to other servers, by result (delivered|failed).",
		}, []string{"result"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_control_peer_pushes_received_total", Help: "Pushes of traffic summaries from other servers, by result (accepted|refused).",
		}, []string{"result"}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_control_peers", Help: "Other servers this server pushes traffic summaries to."}),
	}
	reg.MustRegister(m.pushes, m.received, m.peers)
	return m
}

// peers returns the servers registered but self.
func (s *state) peers(self string) []serverRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]serverRecord, 0, len(s.servers))
	for id, r := range s.servers {
		if id != self {
			out = append(out, r)
		}
	}
	return out
}

// advertiseAddress is where peers reach this server: the configured
// address; else the listen address when it names a host; else the first
// advertised name, or the host name, with the listen port.
func (s *Server) advertiseAddress() string {
	if s.cfg.AdvertiseAddress != "" {
		return s.cfg.AdvertiseAddress
	}
	host, port, _ := net.SplitHostPort(s.Addr())
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if len(s.cfg.AdvertiseNames) > 0 {
			host = s.cfg.AdvertiseNames[0]
		} else if h, err := os.Hostname(); err == nil && h != "" {
			host = h
		}
	}
	return net.JoinHostPort(host, port)
}

// peerTLS makes the API's TLS configuration ask peers, and only them,
// for a client certificate; the handler verifies it (verifyServerChain)
// against the trust bundle of the moment.
func peerTLS(base *tls.Config) {
	peer := base.Clone()
	peer.ClientAuth = tls.RequireAnyClientCert
	base.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		if h.ServerName == peerSNI {
			return peer, nil
		}
		return nil, nil
	}
}

// verifyServerChain checks that chain (leaf first) is a server's of this
// mesh: it verifies to the trust bundle for usage, and the leaf's one URI
// SAN is spiffe://<trust-domain>/trellis/server.
func (s *Server) verifyServerChain(chain []*x509.Certificate, usage x509.ExtKeyUsage) error {
	if len(chain) == 0 {
		return errors.New("no certificate")
	}
	m := s.state.mesh()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(m.RootsPEM)) {
		return errors.New("no trust bundle yet")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return err
	}
	id, err := identity.SPIFFEIDFromCertificate(chain[0])
	if err != nil {
		return err
	}
	if id.Path() != v1.ServerIDPath || id.TrustDomain() != m.TrustDomain {
		return fmt.Errorf("certificate is for %s, not spiffe://%s%s", id, m.TrustDomain, v1.ServerIDPath)
	}
	return nil
}

// peerClient is the HTTP client of the pushes: it presents the serving
// certificate and accepts only a server of the mesh.
func (s *Server) peerClient() *http.Client {
	return &http.Client{
		Timeout: peerTimeout,
		Transport: &http.Transport{
			DialContext: (&net.Dialer{Timeout: peerTimeout}).DialContext,
			TLSClientConfig: &tls.Config{
				MinVersion: tls.VersionTLS12,
				ServerName: peerSNI,
				// The peer is checked by its SPIFFE ID, not a DNS
				// name, in VerifyConnection.
				InsecureSkipVerify: true,
				VerifyConnection: func(cs tls.ConnectionState) error {
					if err := s.verifyServerChain(cs.PeerCertificates, x509.ExtKeyUsageServerAuth); err != nil {
						return fmt.Errorf("peer is not a server of this mesh: %w", err)
					}
					return nil
				},
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					return s.serving.Load(), nil
				},
			},
			TLSHandshakeTimeout: peerTimeout,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     time.Minute,
		},
	}
}

// registerServer keeps this server's record under a lease until ctx
// ends, then revokes it so that peers stop pushing at once.
func (s *Server) registerServer(ctx context.Context) {
	rec := serverRecord{ID: s.id, Address: s.advertiseAddress()}
	b, _ := json.Marshal(rec)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		lease, err := s.store.Grant(ctx, s.cfg.LeaseTTL)
		if err == nil {
			if err = s.store.Put(ctx, serverKey(rec.ID), b, lease); err == nil {
				s.log.Info("registered for peer servers", "id", rec.ID, "address", rec.Address)
				backoff = 100 * time.Millisecond
				err = s.store.KeepAlive(ctx, lease)
			}
			if ctx.Err() != nil {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				s.store.Revoke(rctx, lease)
				cancel()
				return
			}
		}
		s.log.Warn("server registration lost; registering again", "err", err)
		sleep(ctx, backoff)
		backoff = min(backoff*2, 5*time.Second)
	}
}

// runPeering registers the server and pushes to its peers until ctx ends.
// Pushes go out three quarters into each interval: a slot's last
// summaries come in by half the next interval (proxies send at the same
// interval, and Ring.Add files a summary at the middle of what it
// covers), and a peer counts the slot an interval and a grace period
// after it ends (Ring.Stats).
func (s *Server) runPeering(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.registerServer(ctx) })
	client := s.peerClient()
	defer client.CloseIdleConnections()
	type pusher struct {
		kick   chan struct{}
		cancel context.CancelFunc
	}
	pushers := map[serverRecord]*pusher{}
	defer func() {
		for _, p := range pushers {
			p.cancel()
		}
	}()
	iv := s.stats.Interval()
	for {
		now := time.Now()
		next := now.Truncate(iv).Add(iv * 3 / 4)
		if !next.After(now) {
			next = next.Add(iv)
		}
		t := time.NewTimer(next.Sub(now))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		live := map[serverRecord]bool{}
		for _, r := range s.state.peers(s.id) {
			live[r] = true
			if pushers[r] == nil {
				pctx, cancel := context.WithCancel(ctx)
				p := &pusher{kick: make(chan struct{}, 1), cancel: cancel}
				pushers[r] = p
				wg.Go(func() { s.pushTo(pctx, client, r, p.kick) })
			}
		}
		for r, p := range pushers {
			if !live[r] {
				p.cancel()
				delete(pushers, r)
			}
		}
		s.peerm.peers.Set(float64(len(pushers)))
		for _, p := range pushers {
			select {
			case p.kick <- struct{}{}:
			default: // still pushing: the next push carries this one's slots too
			}
		}
	}
}

// pushTo pushes to one peer at each kick what changed since the last
// push it took, until ctx ends. A failed push is sent again, with what
// changed meanwhile, at the next kick.
func (s *Server) pushTo(ctx context.Context, client *http.Client, peer serverRecord, kick <-chan struct{}) {
	log := s.log.With("peer", peer.ID, "address", peer.Address)
	var cur stats.Cursor
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		}
		slots, next := s.stats.Export(cur, time.Now())
		if len(slots) == 0 {
			continue
		}
		err := s.push(ctx, client, peer.Address, &stats.Push{Origin: s.id, IntervalMS: s.stats.Interval().Milliseconds(), Slots: slots})
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.peerm.pushes.WithLabelValues("failed").Inc()
			if !failing {
				log.Warn("push traffic summaries to peer server", "err", err)
			}
			failing = true
			continue
		}
		s.peerm.pushes.WithLabelValues("delivered").Inc()
		if failing {
			log.Info("peer server takes traffic summaries again")
		}
		failing = false
		cur = next
	}
}

func (s *Server) push(ctx context.Context, client *http.Client, addr string, p *stats.Push) error {
	body, err := p.Encode()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+pushPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("peer answered %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// receivePush serves a peer's push: from a server of the mesh only
// (mutual TLS), valid, at this server's interval.
func (s *Server) receivePush(w http.ResponseWriter, r *http.Request) {
	if code, err := s.acceptPush(w, r); err != nil {
		s.peerm.received.WithLabelValues("refused").Inc()
		s.logRefusal("peer push refused", "remote", r.RemoteAddr, "code", code, "reason", err.Error())
		writeJSON(w, code, map[string]string{"error": err.Error()})
		return
	}
	s.peerm.received.WithLabelValues("accepted").Inc()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) acceptPush(w http.ResponseWriter, r *http.Request) (int, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return http.StatusUnauthorized, errors.New("pushes between servers need a server's certificate (mutual TLS)")
	}
	if err := s.verifyServerChain(r.TLS.PeerCertificates, x509.ExtKeyUsageClientAuth); err != nil {
		return http.StatusForbidden, fmt.Errorf("not a server of this mesh: %w", err)
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, stats.MaxPushBytes))
	if err != nil {
		return http.StatusBadRequest, fmt.Errorf("read push: %w", err)
	}
	p, err := stats.DecodePush(b)
	if err != nil {
		return http.StatusBadRequest, err
	}
	if p.Origin == s.id {
		return http.StatusBadRequest, fmt.Errorf("origin %s is this server", p.Origin)
	}
	if iv := s.stats.Interval(); p.IntervalMS != iv.Milliseconds() {
		return http.StatusConflict, fmt.Errorf("stats interval %v, this server's %v: every server of a mesh needs the same --stats-interval",
			time.Duration(p.IntervalMS)*time.Millisecond, iv)
	}
	if skipped := s.stats.Merge(p, time.Now()); skipped > 0 {
		s.log.Debug("peer slots skipped (too old, too far ahead, or too many origins)", "origin", p.Origin, "skipped", skipped)
	}
	return 0, nil
}
