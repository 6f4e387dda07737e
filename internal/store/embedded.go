package store

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Embedded is a single-member etcd running inside this process.
type Embedded struct {
	e         *embed.Etcd
	endpoints []string
}

// StartEmbedded starts etcd with its data in dir/etcd, listening on free
// loopback ports (never the well-known 2379/2380, so that it cannot clash
// with another etcd on the machine), and waits until it serves.
func StartEmbedded(ctx context.Context, dir string) (*Embedded, error) {
	// A free port can be taken by another process between the look and
	// etcd's bind; then try other ports.
	for attempt := 1; ; attempt++ {
		m, err := startEmbedded(ctx, dir)
		if err == nil || attempt == 5 || !strings.Contains(err.Error(), "address already in use") {
			return m, err
		}
	}
}

func startEmbedded(ctx context.Context, dir string) (*Embedded, error) {
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
	cfg.Name = "trellis"
	cfg.ListenClientUrls = []url.URL{*clientURL}
	cfg.AdvertiseClientUrls = []url.URL{*clientURL}
	cfg.ListenPeerUrls = []url.URL{*peerURL}
	cfg.AdvertisePeerUrls = []url.URL{*peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	// etcd logs through zap, apart from Trellis's slog; at "error" it also
	// reports its own orderly shutdown as failures. Real store errors reach
	// Trellis as client errors and are logged there.
	cfg.LogLevel = "fatal"
	cfg.Logger = "zap"
	cfg.LogOutputs = []string{"stderr"}
	// A development store: keep the history small and snapshots cheap.
	cfg.AutoCompactionMode = "revision"
	cfg.AutoCompactionRetention = "1000"
	cfg.SnapshotCount = 10000
	cfg.ListenMetricsUrls = nil
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
	return &Embedded{e: e, endpoints: []string{clientURL.String()}}, nil
}

// Endpoints returns the client URLs to pass to NewEtcd.
func (m *Embedded) Endpoints() []string { return m.endpoints }

// Close stops etcd.
func (m *Embedded) Close() { m.e.Close() }

func freeLoopbackURL() (*url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return &url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}
