package passthrough_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/proxy/passthrough"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
	"github.com/trellis-mesh/trellis/internal/topology"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// Two networks on loopback: the caller "web" in network a (127.0.0.2),
// the service "api" in network b (its sidecar's inbound on 127.0.0.3),
// and network b's gateways on 127.0.0.4 and 127.0.0.5, configured as a
// network gateway is: the SNI names the instance, the target is its
// public mTLS listener, nothing is checked but the registry.

// netInbound is a sidecar's public mTLS listener for service, in front of
// an echo app; peers records the identities it authorized.
type netInbound struct {
	addr  string
	mu    sync.Mutex
	peers []string
}

func (n *netInbound) peerIDs() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.peers...)
}

func listenOn(t *testing.T, ip string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Skipf("no loopback address %s: %v", ip, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func startInbound(t *testing.T, ca *trellistest.CA, ip, service string) *netInbound {
	t.Helper()
	app := listenOn(t, "127.0.0.1")
	appAddr := trellistest.Serve(t, app, func(c net.Conn) { io.Copy(c, c) })
	n := &netInbound{}
	in := &l4.Inbound{
		TLS: ca.Source(t, service).ServerConfig(nil, l4.ALPN),
		Authorize: func(peer identity.ID) authz.Decision {
			n.mu.Lock()
			n.peers = append(n.peers, peer.String())
			n.mu.Unlock()
			return authz.Decision{Allow: true}
		},
		Target:  appAddr,
		Metrics: l4.NewMetrics(prometheus.NewRegistry()),
	}
	l := listenOn(t, ip)
	go in.Serve(l)
	n.addr = l.Addr().String()
	return n
}

// netGateway is a network gateway listener for targets (SNI -> address).
type netGateway struct {
	addr    string
	ln      net.Listener
	metrics *l4.Metrics
	l       *passthrough.Listener
}

func startNetGateway(t *testing.T, ip string, targets map[string]string) *netGateway {
	t.Helper()
	g := &netGateway{metrics: l4.NewMetrics(prometheus.NewRegistry())}
	g.l = &passthrough.Listener{
		Config: func() passthrough.Config {
			cfg := passthrough.Config{
				Registered: true,
				Service: func(sni string) (string, bool) {
					_, ok := targets[sni]
					return sni, ok
				},
				Label: func(sni string) string {
					_, svc, _ := topology.ParseNetworkSNI(sni)
					return svc
				},
			}
			for sni := range targets {
				cfg.Services = append(cfg.Services, sni)
			}
			return cfg
		},
		Targets: func(sni string) []passthrough.Target {
			if a, ok := targets[sni]; ok {
				return []passthrough.Target{{Addr: a, Instance: sni}}
			}
			return nil
		},
		Metrics:   g.metrics,
		Direction: "network",
	}
	g.ln = listenOn(t, ip)
	g.addr = g.ln.Addr().String()
	go g.l.Serve(g.ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		g.l.Drain(ctx)
	})
	return g
}

func (g *netGateway) forwarded(service string) float64 {
	return testutil.ToFloat64(g.metrics.Connections.WithLabelValues("network", service, "ok"))
}

// caller is web's outbound for api: endpoints come from ep, which a test
// changes as a snapshot would.
type caller struct {
	listen string
	pool   *l4.Pool
	ep     atomic.Pointer[l4.Endpoint]
	m      *l4.Metrics
}

func startCaller(t *testing.T, ca *trellistest.CA, expect string, ep l4.Endpoint) *caller {
	t.Helper()
	c := &caller{m: l4.NewMetrics(prometheus.NewRegistry())}
	c.ep.Store(&ep)
	c.pool = l4.NewPool(2*time.Second, 0, c.m)
	t.Cleanup(c.pool.Close)
	out := &l4.Outbound{
		Service:   expect,
		Endpoints: func() []l4.Endpoint { return []l4.Endpoint{*c.ep.Load()} },
		TLS:       ca.Source(t, "web").ClientConfig(certs.ExpectService(expect), l4.ALPN),
		Pool:      c.pool,
	}
	l := listenOn(t, "127.0.0.2")
	go out.Serve(l)
	c.listen = l.Addr().String()
	return c
}

// set changes the endpoint's path and tells the pool, as applying a
// snapshot does.
func (c *caller) set(ep l4.Endpoint) {
	c.ep.Store(&ep)
	c.pool.Forget(map[string]l4.Endpoint{ep.Key(): ep})
}

func echoOnce(addr string, msg []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	go func() { c.Write(msg); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo differs: " + string(got))
	}
	return nil
}

func closedAddr(t *testing.T, ip string) string {
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Skipf("no loopback address %s: %v", ip, err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

func TestNetworkGatewayCarriesMTLSEndToEnd(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	api := startInbound(t, ca, "127.0.0.3", "api")
	sni := topology.NetworkSNI("api-1", "api")
	gw := startNetGateway(t, "127.0.0.4", map[string]string{sni: api.addr})
	web := startCaller(t, ca, "api", l4.Endpoint{Addr: api.addr, Instance: "api-1", Via: []string{gw.addr}, SNI: sni})

	for i := range 5 {
		if err := echoOnce(web.listen, []byte("hello through the gateway")); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	// One pooled mTLS connection, opened through the gateway; the peer
	// identity is checked between the sidecars, through it.
	if got := gw.forwarded("api"); got != 1 {
		t.Errorf("gateway connections{network, api, ok} = %v, want 1", got)
	}
	if peers := api.peerIDs(); len(peers) != 5 || peers[0] != "spiffe://trellis.local/svc/web" {
		t.Errorf("api authorized %v, want web's SPIFFE ID for each of 5 streams", peers)
	}
	// Bytes are counted when the connection ends.
	web.pool.Close()
	trellistest.Eventually(t, 5*time.Second, "gateway byte counters", func() error {
		for _, flow := range []string{"sent", "received"} {
			if got := testutil.ToFloat64(gw.metrics.Bytes.WithLabelValues("network", "api", flow)); got == 0 {
				return errors.New("gateway bytes{network, api, " + flow + "} = 0")
			}
		}
		return nil
	})

	// A name the gateway does not route is refused, and counted.
	c, err := tls.Dial("tcp", gw.addr, &tls.Config{ServerName: topology.NetworkSNI("ghost", "api"), InsecureSkipVerify: true})
	if err == nil {
		c.Close()
		t.Fatal("handshake through the gateway with an unknown SNI succeeded")
	}
	if got := testutil.ToFloat64(gw.metrics.Connections.WithLabelValues("network", "", "denied")); got != 1 {
		t.Errorf("gateway connections{network, \"\", denied} = %v, want 1", got)
	}
}

// A gateway that forwards to the wrong service's sidecar (misconfigured
// or hostile) cannot pass for the service: the caller's handshake checks
// the peer's SPIFFE ID end to end.
func TestNetworkGatewayCannotSwapThePeer(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	other := startInbound(t, ca, "127.0.0.3", "billing")
	sni := topology.NetworkSNI("api-1", "api")
	gw := startNetGateway(t, "127.0.0.4", map[string]string{sni: other.addr})
	pool := l4.NewPool(2*time.Second, 0, nil)
	defer pool.Close()
	cfg := ca.Source(t, "web").ClientConfig(certs.ExpectService("api"), l4.ALPN)
	_, err := pool.Get(t.Context(), l4.Endpoint{Addr: "127.0.0.3:1", Via: []string{gw.addr}, SNI: sni}, "api", cfg)
	if err == nil {
		t.Fatal("connected to billing's sidecar as api through the gateway")
	}
	if reason := certs.RejectReason(err); reason == "other" {
		t.Errorf("error %v is not a certificate rejection", err)
	}
	if gw.forwarded("api") != 1 {
		t.Errorf("the gateway did not forward the attempt (connections = %v): the test proves nothing", gw.forwarded("api"))
	}
	if len(other.peerIDs()) != 0 {
		t.Errorf("billing authorized streams %v", other.peerIDs())
	}
}

func TestNetworkGatewayFailover(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	api := startInbound(t, ca, "127.0.0.3", "api")
	sni := topology.NetworkSNI("api-1", "api")
	targets := map[string]string{sni: api.addr}
	gw1 := startNetGateway(t, "127.0.0.4", targets)
	gw2 := startNetGateway(t, "127.0.0.5", targets)
	dead := closedAddr(t, "127.0.0.6")

	// One of the two gateways is closed: every call goes through the
	// other, whichever the pool tries first.
	web := startCaller(t, ca, "api", l4.Endpoint{Addr: api.addr, Instance: "api-1", Via: []string{dead, gw1.addr}, SNI: sni})
	for i := range 10 {
		if err := echoOnce(web.listen, []byte("x")); err != nil {
			t.Fatalf("call %d with one gateway closed: %v", i, err)
		}
	}
	if got := gw1.forwarded("api"); got != 1 {
		t.Errorf("gateway 1 forwarded %v connections, want 1", got)
	}
	// Each new pool picks its first gateway at random: ten of them try
	// the closed one first about five times, and must pass over it.
	cfg := ca.Source(t, "web").ClientConfig(certs.ExpectService("api"), l4.ALPN)
	for i := range 10 {
		p := l4.NewPool(2*time.Second, 0, nil)
		c, err := p.Get(t.Context(), l4.Endpoint{Addr: api.addr, Via: []string{dead, gw1.addr}, SNI: sni}, "api", cfg)
		if err != nil {
			t.Errorf("new pool %d with one gateway closed: %v", i, err)
		} else {
			c.Unreserve()
		}
		p.Close()
	}

	// The snapshot moves the endpoint to gateway 2 (gateway 1 left):
	// a stream open on the old path goes on, new streams take the new
	// path, and the old connection closes once its stream ends.
	long, err := net.Dial("tcp", web.listen)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	long.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := long.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(long, make([]byte, 1)); err != nil {
		t.Fatalf("long stream: %v", err)
	}
	web.set(l4.Endpoint{Addr: api.addr, Instance: "api-1", Via: []string{gw2.addr}, SNI: sni})
	if err := echoOnce(web.listen, []byte("new path")); err != nil {
		t.Fatalf("call after the path changed: %v", err)
	}
	if got := gw2.forwarded("api"); got != 1 {
		t.Errorf("gateway 2 forwarded %v connections after the change, want 1", got)
	}
	if _, err := long.Write([]byte("b")); err != nil {
		t.Fatalf("stream on the retired path: %v", err)
	}
	if _, err := io.ReadFull(long, make([]byte, 1)); err != nil {
		t.Fatalf("stream on the retired path was cut: %v", err)
	}
	long.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, long)
	trellistest.Eventually(t, 5*time.Second, "the old path's connection closed", func() error {
		if n := testutil.ToFloat64(gw1.metrics.Active.WithLabelValues("network")); n != 0 {
			return errors.New("gateway 1 still carries a connection")
		}
		return nil
	})

	// Every gateway gone: a new connection fails, fast, naming each one.
	gw2.ln.Close()
	fresh := l4.NewPool(2*time.Second, 0, nil)
	defer fresh.Close()
	start := time.Now()
	_, err = fresh.Get(t.Context(), l4.Endpoint{Addr: api.addr, Via: []string{dead, gw2.addr}, SNI: sni}, "api", ca.Source(t, "web").ClientConfig(certs.ExpectService("api"), l4.ALPN))
	if err == nil {
		t.Fatal("connected with every gateway closed")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("failing with every gateway closed took %v", d)
	}
	for _, a := range []string{dead, gw2.addr} {
		if !bytes.Contains([]byte(err.Error()), []byte(a)) {
			t.Errorf("error %q does not name gateway %s", err, a)
		}
	}
}

// Networks joined by gateways may use the same private addresses (that
// is often why they are not routed): api's instances in networks b and
// c both register 10.9.9.9:8443. The pool keeps a connection to each,
// and uses it again, instead of taking one for the other and retiring it
// at every call; Forget keeps both.
func TestPoolTellsApartEndpointsAtOneAddressInTwoNetworks(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	apiB := startInbound(t, ca, "127.0.0.3", "api")
	apiC := startInbound(t, ca, "127.0.0.3", "api")
	sniB, sniC := topology.NetworkSNI("api-b", "api"), topology.NetworkSNI("api-c", "api")
	gwB := startNetGateway(t, "127.0.0.4", map[string]string{sniB: apiB.addr})
	gwC := startNetGateway(t, "127.0.0.5", map[string]string{sniC: apiC.addr})
	const shared = "10.9.9.9:8443"
	epB := l4.Endpoint{Addr: shared, Instance: "api-b", Via: []string{gwB.addr}, SNI: sniB}
	epC := l4.Endpoint{Addr: shared, Instance: "api-c", Via: []string{gwC.addr}, SNI: sniC}
	pool := l4.NewPool(2*time.Second, 0, nil)
	defer pool.Close()
	cfg := ca.Source(t, "web").ClientConfig(certs.ExpectService("api"), l4.ALPN)
	get := func(ep l4.Endpoint) *tunnel.Conn {
		t.Helper()
		c, err := pool.Get(t.Context(), ep, "api", cfg)
		if err != nil {
			t.Fatalf("%s: %v", ep.Instance, err)
		}
		c.Unreserve()
		return c
	}
	b, c := get(epB), get(epC)
	if b == c {
		t.Fatal("one connection for two instances")
	}
	pool.Forget(map[string]l4.Endpoint{epB.Key(): epB, epC.Key(): epC})
	for range 3 {
		if got := get(epB); got != b {
			t.Error("api-b's connection was replaced")
		}
		if got := get(epC); got != c {
			t.Error("api-c's connection was replaced")
		}
	}
	if gwB.forwarded("api") != 1 || gwC.forwarded("api") != 1 {
		t.Errorf("gateways forwarded b %v, c %v connections, want 1 each", gwB.forwarded("api"), gwC.forwarded("api"))
	}
}
