package sidecar

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/topology"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// A snapshot whose roots no longer include the one that verified a
// caller closes that caller's open connection (GOAWAY, then close after
// the drain); a snapshot with the same roots touches nothing.
func TestSnapshotDroppingARootRetiresItsConnections(t *testing.T) {
	caA := trellistest.NewCA(t, "trellis.local")
	caB := trellistest.NewCA(t, "trellis.local")
	both := string(caA.RootsPEM()) + string(caB.RootsPEM())
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := trellistest.Serve(t, echo, func(c net.Conn) { io.Copy(c, c) })
	p, err := New(Config{Service: "web", AppAddr: app, Server: "127.0.0.1:1", Token: "t", DrainTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	snap := func(roots string) *topology.Snapshot {
		return &topology.Snapshot{Version: roots[:40], Service: "web", TrustDomain: "trellis.local", RootsPEM: roots}
	}
	if err := p.apply(snap(both)); err != nil {
		t.Fatal(err)
	}
	p.setCertificate(caB.SVID(t, "web", 0))
	in := &l4.Inbound{TLS: p.src.ServerConfig(nil, l4.ALPN), Target: app, Guard: p.guard, Metrics: p.l4m,
		Authorize: func(identity.ID) authz.Decision { return authz.Decision{Allow: true} }}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go in.Serve(l)
	t.Cleanup(func() { l.Close() })

	caller := &certs.Source{}
	caller.SetCertificate(caA.SVID(t, "alpha", 0))
	bothBundle, err := certs.NewBundle("trellis.local", []byte(both))
	if err != nil {
		t.Fatal(err)
	}
	caller.SetBundle(bothBundle)
	pool := l4.NewPool(0, 0, nil)
	t.Cleanup(pool.Close)
	cfg := caller.ClientConfig(certs.ExpectService("web"), l4.ALPN)
	conn, err := pool.Get(t.Context(), l4.Endpoint{Addr: l.Addr().String()}, "web", cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn.Unreserve()
	trellistest.Eventually(t, 5*time.Second, "the connection tracked", func() error {
		if p.guard.Open() != 1 {
			return errors.New("not yet")
		}
		return nil
	})

	// The same roots again: nothing happens.
	if err := p.apply(snap(both)); err != nil {
		t.Fatal(err)
	}
	if !conn.Usable() {
		t.Fatal("a snapshot with the same roots retired the connection")
	}
	// Root A dropped: alpha's connection goes.
	if err := p.apply(snap(string(caB.RootsPEM()))); err != nil {
		t.Fatal(err)
	}
	trellistest.Eventually(t, 5*time.Second, "alpha's connection closed", func() error {
		select {
		case <-conn.Done():
			return nil
		default:
			return errors.New("still open")
		}
	})
	if got := testutil.ToFloat64(p.l4m.Retired.WithLabelValues("inbound", "alpha", l4.RetiredTrust)); got != 1 {
		t.Errorf("retired{inbound,alpha,trust} = %v, want 1", got)
	}
}
