package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Embedded is a single-member etcd running inside this process.
//
// Only this process can use it. Both of etcd's listeners, the client one and
// the peer one a single member still opens, bind loopback and demand mutual
// TLS with certificates made at every start (see embeddedCreds): the client
// certificate exists only in this process's memory, so another local process
// reaches a TLS handshake it cannot finish. No other listener is opened
// (no metrics URL, no HTTP gateway, no pprof). Mutual TLS rather than a unix
// socket in the data dir because the check then does not depend on the
// socket path's length limit or on file modes alone, and it also proves to
// the client that the etcd it reached is the one it started.
type Embedded struct {
	e     *embed.Etcd
	lock  *fileutil.LockedFile
	creds *embeddedCreds
	url   string
}

// EmbeddedConfig says where and how to run the embedded etcd.
type EmbeddedConfig struct {
	// Dir holds etcd's data (Dir/etcd) and credentials (Dir/etcd-tls); it
	// must be private to this user (see PrivateDir, which is applied).
	Dir string
	// OnRefused, when set, is called for every connection etcd refuses at
	// its TLS handshake, from etcd's goroutines; it must not block.
	OnRefused func(Refusal)
}

// StartEmbedded starts etcd with its data in cfg.Dir/etcd and its
// credentials in cfg.Dir/etcd-tls, listening on free loopback ports (never the well-known
// 2379/2380, so that it cannot clash with another etcd on the machine), and
// waits until it serves. A second StartEmbedded on the same dir fails while
// the first runs.
func StartEmbedded(ctx context.Context, ecfg EmbeddedConfig) (*Embedded, error) {
	dir := ecfg.Dir
	if _, err := PrivateDir(dir); err != nil {
		return nil, err
	}
	// Credentials are rewritten at every start; a second server on the same
	// dir would swap them under the running etcd, which reads its
	// certificate files at every handshake. etcd's own lock is taken too
	// late to prevent that.
	lockFile := filepath.Join(dir, "etcd.lock")
	lock, err := fileutil.TryLockFile(lockFile, os.O_WRONLY|os.O_CREATE, 0o600)
	if errors.Is(err, fileutil.ErrLocked) {
		return nil, fmt.Errorf("embedded etcd in %s: in use by another trellis server (%s is locked)", dir, lockFile)
	}
	if err != nil {
		return nil, fmt.Errorf("embedded etcd lock: %w", err)
	}
	creds, err := makeEmbeddedCreds(filepath.Join(dir, "etcd-tls"), time.Now())
	if err != nil {
		lock.Close()
		return nil, err
	}
	logger, err := etcdLogger(ecfg.OnRefused)
	if err != nil {
		lock.Close()
		return nil, err
	}
	// A free port can be taken by another process between the look and
	// etcd's bind; then try other ports.
	for attempt := 1; ; attempt++ {
		m, err := startEmbedded(ctx, dir, creds, logger)
		if err == nil {
			m.lock = lock
			return m, nil
		}
		if attempt == 5 || !strings.Contains(err.Error(), "address already in use") {
			lock.Close()
			return nil, err
		}
	}
}

// embeddedName is the embedded etcd member's name, which a restore gives
// the member it makes.
const embeddedName = "trellis"

func startEmbedded(ctx context.Context, dir string, creds *embeddedCreds, logger *zap.Logger) (*Embedded, error) {
	clientURL, err := freeLoopbackURL()
	if err != nil {
		return nil, err
	}
	peerURL, err := freeLoopbackURL()
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.Name = embeddedName
	cfg.ListenClientUrls = []url.URL{*clientURL}
	cfg.AdvertiseClientUrls = []url.URL{*clientURL}
	cfg.ListenPeerUrls = []url.URL{*peerURL}
	cfg.AdvertisePeerUrls = []url.URL{*peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	cfg.ClientTLSInfo.CertFile = creds.certFile
	cfg.ClientTLSInfo.KeyFile = creds.keyFile
	cfg.ClientTLSInfo.TrustedCAFile = creds.caFile
	cfg.ClientTLSInfo.ClientCertAuth = true
	cfg.PeerTLSInfo.CertFile = creds.peerCertFile
	cfg.PeerTLSInfo.KeyFile = creds.peerKeyFile
	cfg.PeerTLSInfo.TrustedCAFile = creds.peerCAFile
	cfg.PeerTLSInfo.ClientCertAuth = true
	// Nothing else listens: no separate HTTP client URLs, no metrics URL,
	// no JSON gateway (it would be behind the same TLS, but an API nobody
	// here uses is surface), no pprof.
	cfg.ListenClientHttpUrls = nil
	cfg.ListenMetricsUrls = nil
	cfg.EnableGRPCGateway = false
	cfg.EnablePprof = false
	// etcd logs through zap, apart from Trellis's slog: only its fatal
	// messages (at "error" it also reports its own orderly shutdown as
	// failures), and the connections it refuses, which go to OnRefused.
	// Real store errors reach Trellis as client errors and are logged there.
	cfg.LogLevel = "fatal"
	cfg.Logger = "zap"
	cfg.LogOutputs = []string{"stderr"}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(logger)
	// A development store: keep the history small and snapshots cheap.
	cfg.AutoCompactionMode = "revision"
	cfg.AutoCompactionRetention = "1000"
	cfg.SnapshotCount = 10000
	// The peer port is never reached by another member; there is none.
	cfg.ClusterState = embed.ClusterStateFlagNew
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: not ready after 60s", cfg.Dir)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return &Embedded{e: e, creds: creds, url: clientURL.String()}, nil
}

// Endpoints returns the client URLs.
func (m *Embedded) Endpoints() []string { return []string{m.url} }

// Config returns what NewEtcd needs to reach this etcd: its endpoint and the
// TLS configuration holding the only client certificate it accepts. Set
// Prefix and DialTimeout on the result as wanted.
func (m *Embedded) Config() EtcdConfig {
	return EtcdConfig{Endpoints: m.Endpoints(), TLS: m.creds.client.Clone()}
}

// Close stops etcd and releases the data dir.
func (m *Embedded) Close() {
	m.e.Close()
	m.lock.Close()
}

func freeLoopbackURL() (*url.URL, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(embeddedHost.String(), "0"))
	if err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return &url.URL{Scheme: "https", Host: l.Addr().String()}, nil
}
