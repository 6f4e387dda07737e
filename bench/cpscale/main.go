// Command cpscale measures the control plane under many proxy streams: it
// starts an etcd and one or more real `trellis server` processes, opens N
// proxy streams from this one process (many streams per gRPC connection),
// and reports how long they take to connect, how long a change takes to
// reach every proxy it concerns, the servers' RSS and CPU, and etcd's
// write rate. See bench/NOTES.md ("Control-plane scale").
//
//	go run ./bench/cpscale -n 1000
//	go run ./bench/cpscale -n 2000 -calls 0   # everyone calls everyone
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/xds"
)

type config struct {
	n, services, calls, perConn, servers int
	bin, etcd                            string
	settle, timeout                      time.Duration
}

func main() {
	var c config
	flag.IntVar(&c.n, "n", 1000, "proxy streams")
	flag.IntVar(&c.services, "services", 200, "services; proxies are spread evenly over them")
	flag.IntVar(&c.calls, "calls", 5, "upstreams per proxy (0: every service)")
	flag.IntVar(&c.perConn, "per-conn", 200, "streams per gRPC connection")
	flag.IntVar(&c.servers, "servers", 1, "trellis servers sharing the etcd; streams are spread over them")
	flag.StringVar(&c.bin, "trellis", "", "trellis binary (default: build ./cmd/trellis)")
	flag.StringVar(&c.etcd, "etcd", "etcd", "etcd binary")
	flag.DurationVar(&c.settle, "settle", 3*time.Second, "quiet time that counts as settled")
	flag.DurationVar(&c.timeout, "timeout", 10*time.Minute, "give up on a phase after this long")
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	ctx, cancel := context.WithCancel(context.Background())
	err := run(ctx, c)
	cancel()
	if err != nil {
		log.Fatal(err)
	}
}

// proxy is one simulated proxy stream.
type proxy struct {
	reg    xds.Registration
	st     discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	sendMu sync.Mutex

	mu      sync.Mutex
	first   time.Time // first response
	last    time.Time // latest response
	seen    int64     // the mark of the latest response
	at      time.Time // when a response of mark seen first came
	resps   int
	patches int
	bytes   int64
}

// mark numbers the change in progress: a response counts for the first
// change that was made before it arrived.
var mark atomic.Int64

// reconnects counts streams that failed and were opened again.
var reconnects atomic.Int64

func (p *proxy) send(r *discoveryv3.DiscoveryRequest) error {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	return p.st.Send(r)
}

// loop acknowledges every response as a proxy would, without decoding the
// snapshot: the bench measures the server, not its own JSON.
func (p *proxy) loop() error {
	for {
		p.sendMu.Lock()
		st := p.st
		p.sendMu.Unlock()
		r, err := st.Recv()
		if err != nil {
			return err
		}
		now := time.Now()
		m := mark.Load()
		p.mu.Lock()
		if p.first.IsZero() {
			p.first = now
		}
		p.last = now
		if p.seen != m {
			p.seen, p.at = m, now
		}
		p.resps++
		for _, res := range r.GetResources() {
			p.bytes += int64(len(res.GetValue()))
			if res.GetTypeUrl() == xds.PatchType {
				p.patches++
			}
		}
		p.mu.Unlock()
		if err := p.send(&discoveryv3.DiscoveryRequest{TypeUrl: xds.SnapshotType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
			return err
		}
	}
}

type server struct {
	cmd           *exec.Cmd
	addr, dir     string
	admin         string
	caPEM         []byte
	cpu0          float64
	streamsOpened int
}

func run(ctx context.Context, c config) error {
	tmp, err := os.MkdirTemp("", "cpscale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if c.bin == "" {
		c.bin = filepath.Join(tmp, "trellis")
		out, err := exec.Command("go", "build", "-o", c.bin, "./cmd/trellis").CombinedOutput()
		if err != nil {
			return fmt.Errorf("build trellis: %v: %s", err, out)
		}
	}
	etcdURL, etcdCmd, err := startEtcd(c.etcd, tmp)
	if err != nil {
		return err
	}
	defer stop(etcdCmd)
	ec, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer ec.Close()
	revision := func() int64 {
		r, err := ec.Get(ctx, "/cpscale-none")
		if err != nil {
			return -1
		}
		return r.Header.Revision
	}

	var servers []*server
	defer func() {
		for _, s := range servers {
			stop(s.cmd)
		}
	}()
	for i := range c.servers {
		var extra []string
		if i > 0 {
			// The CA is shared through the store, sealed with the
			// first server's store secret.
			extra = []string{"--store-secret-file", filepath.Join(servers[0].dir, "store-secret")}
		}
		s, err := startServer(ctx, c.bin, filepath.Join(tmp, fmt.Sprintf("server-%d", i)), etcdURL, extra)
		if err != nil {
			return err
		}
		servers = append(servers, s)
	}
	api, err := client.New(client.Config{Addr: servers[0].addr, Token: servers[0].admin, CAPEM: servers[0].caPEM, Timeout: time.Minute})
	if err != nil {
		return err
	}
	var res []v1.Resource
	for i := range c.services {
		res = append(res, v1.Resource{Kind: v1.KindService, Name: svc(i), Service: &v1.ServiceSpec{Protocol: v1.ProtocolHTTP}})
	}
	for len(res) > 0 { // at most 128 resources in one apply
		batch := res[:min(100, len(res))]
		res = res[len(batch):]
		if _, err := api.Apply(ctx, batch); err != nil {
			return fmt.Errorf("apply services: %w", err)
		}
	}

	upstreams := func(s int) []string {
		var ups []string
		if c.calls == 0 {
			for j := range c.services {
				ups = append(ups, svc(j))
			}
			return ups
		}
		for k := 1; k <= c.calls; k++ {
			ups = append(ups, svc((s+k*7)%c.services))
		}
		return ups
	}
	proxies := make([]*proxy, c.n)
	for i := range proxies {
		s := i % c.services
		proxies[i] = &proxy{reg: xds.Registration{
			Instance: fmt.Sprintf("p-%05d", i), Service: svc(s), Version: "v1",
			Address: fmt.Sprintf("127.%d.%d.%d", 1+i/65536, i/256%256, i%256), Port: 20000, Upstreams: upstreams(s), Healthy: true,
		}}
	}

	log.Printf("cpscale: %d proxies, %d services, %s, %d server(s), %d streams per connection",
		c.n, c.services, callsDesc(c), c.servers, c.perConn)
	for _, s := range servers {
		s.cpu0 = cpuSeconds(s.cmd.Process.Pid)
	}
	rev0, t0 := revision(), time.Now()
	var conns []*grpc.ClientConn
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	// Streams end before their connections close (defers run last
	// first): no reconnect is logged for the bench's own end.
	ctx, stopStreams := context.WithCancel(ctx)
	defer stopStreams()
	streamErrs := make(chan error, c.n)
	var openWG sync.WaitGroup
	for i := 0; i < c.n; i += c.perConn {
		s := servers[(i/c.perConn)%len(servers)]
		tlsCfg := api.TLSConfig()
		tlsCfg.NextProtos = []string{xds.ALPN, "h2"} // as a proxy
		cc, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
		if err != nil {
			return err
		}
		conns = append(conns, cc)
		ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cc)
		sctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.admin)
		for _, p := range proxies[i:min(i+c.perConn, c.n)] {
			openWG.Add(1)
			go func() {
				opened := false
				// A failed stream comes back as a proxy's would,
				// after a jittered backoff; the reconnects are counted.
				for ctx.Err() == nil {
					st, err := ads.StreamAggregatedResources(sctx)
					if err == nil {
						p.sendMu.Lock()
						p.st = st
						p.sendMu.Unlock()
						err = p.send(&discoveryv3.DiscoveryRequest{TypeUrl: xds.SnapshotType, Node: p.reg.Node()})
					}
					if !opened {
						opened = true
						openWG.Done()
					}
					if err == nil {
						err = p.loop()
					}
					if ctx.Err() != nil {
						return
					}
					if reconnects.Add(1) <= 5 {
						log.Printf("stream %s: %v; reconnecting", p.reg.Instance, err)
					}
					time.Sleep(time.Second + time.Duration(rand.Int64N(int64(2*time.Second))))
				}
			}()
		}
	}
	openWG.Wait()
	progress := time.NewTicker(5 * time.Second)
	defer progress.Stop()
	if err := waitFor(ctx, c.timeout, streamErrs, func() bool {
		n := 0
		for _, p := range proxies {
			p.mu.Lock()
			if !p.first.IsZero() {
				n++
			}
			p.mu.Unlock()
		}
		select {
		case <-progress.C:
			log.Printf("connecting: %d of %d streams have a snapshot after %v; %d reconnects", n, c.n, time.Since(t0).Round(time.Second), reconnects.Load())
		default:
		}
		return n == c.n
	}); err != nil {
		n := 0
		for _, p := range proxies {
			p.mu.Lock()
			if !p.first.IsZero() {
				n++
			}
			p.mu.Unlock()
		}
		report(servers, "at the timeout")
		return fmt.Errorf("connect: %d of %d streams had a snapshot after %v, %d reconnects: %w", n, c.n, time.Since(t0).Round(time.Second), reconnects.Load(), err)
	}
	connected := time.Since(t0)
	settled, err := settle(ctx, c, proxies, streamErrs)
	if err != nil {
		return err
	}
	settledAt := settled.Sub(t0)
	rev1 := revision()
	var resps, patches int
	var bytes int64
	for _, p := range proxies {
		resps += p.resps
		patches += p.patches
		bytes += p.bytes
	}
	log.Printf("connect: all %d streams had a snapshot after %v; settled (last push) after %v; %d pushes (%d patches, %.1f MB); %d reconnects; etcd %d writes (%.0f/s)",
		c.n, connected.Round(time.Millisecond), settledAt.Round(time.Millisecond), resps, patches, float64(bytes)/1e6,
		reconnects.Load(), rev1-rev0, float64(rev1-rev0)/settledAt.Seconds())
	report(servers, "after connect")

	// The changes. Who they concern: an intention to D, the proxies of D;
	// an endpoint or a route of X, the proxies that call X.
	callers := func(x string) []*proxy {
		var out []*proxy
		for _, p := range proxies {
			if slices.Contains(p.reg.Upstreams, x) {
				out = append(out, p)
			}
		}
		return out
	}
	of := func(s string) []*proxy {
		var out []*proxy
		for _, p := range proxies {
			if p.reg.Service == s {
				out = append(out, p)
			}
		}
		return out
	}
	target := svc(0)
	flip := of(target)[0]
	changes := []struct {
		name    string
		concern []*proxy
		do      func() error
	}{
		{"intention", of(target), func() error {
			_, err := api.Apply(ctx, []v1.Resource{{Kind: v1.KindIntention, Name: svc(1) + "-to-" + target,
				Intention: &v1.IntentionSpec{Source: svc(1), Destination: target, Action: v1.Allow}}})
			return err
		}},
		{"endpoint", callers(target), func() error {
			r := flip.reg
			r.Healthy = false
			return flip.send(&discoveryv3.DiscoveryRequest{TypeUrl: xds.SnapshotType, Node: r.Node()})
		}},
		{"route", callers(target), func() error {
			_, err := api.Apply(ctx, []v1.Resource{{Kind: v1.KindRoute, Name: target,
				Route: &v1.RouteSpec{Rules: []v1.RouteRule{{Name: "all", Timeout: "7s"}}}}})
			return err
		}},
	}
	for i, ch := range changes {
		m := int64(i + 1)
		revA := revision()
		for _, s := range servers {
			s.cpu0 = cpuSeconds(s.cmd.Process.Pid)
		}
		start := time.Now()
		mark.Store(m)
		if err := ch.do(); err != nil {
			return fmt.Errorf("%s change: %w", ch.name, err)
		}
		reached := func() int {
			n := 0
			for _, p := range ch.concern {
				p.mu.Lock()
				if p.seen == m {
					n++
				}
				p.mu.Unlock()
			}
			return n
		}
		err := waitFor(ctx, 60*time.Second, streamErrs, func() bool { return reached() == len(ch.concern) })
		var lat []time.Duration
		for _, p := range ch.concern {
			p.mu.Lock()
			if p.seen == m {
				lat = append(lat, p.at.Sub(start))
			}
			p.mu.Unlock()
		}
		slices.Sort(lat)
		others := 0
		for _, p := range proxies {
			p.mu.Lock()
			if p.seen == m && !slices.Contains(ch.concern, p) {
				others++
			}
			p.mu.Unlock()
		}
		if err != nil {
			log.Printf("%s: only %d of %d concerned proxies reached: %v", ch.name, len(lat), len(ch.concern), err)
		}
		done := time.Now()
		if _, err := settle(ctx, c, proxies, streamErrs); err != nil {
			return err
		}
		revB := revision()
		cpu := 0.0
		for _, s := range servers {
			cpu += cpuSeconds(s.cmd.Process.Pid) - s.cpu0
		}
		log.Printf("change %-9s reached %d/%d proxies: p50 %v p99 %v max %v (and %d others); server CPU %.2fs; etcd %d writes (%.0f/s)",
			ch.name, len(lat), len(ch.concern), pct(lat, 50), pct(lat, 99), pct(lat, 100), others, cpu,
			revB-revA, float64(revB-revA)/done.Sub(start).Seconds())
	}
	report(servers, "at the end")
	log.Printf("reconnects in all: %d", reconnects.Load())
	return nil
}

func callsDesc(c config) string {
	if c.calls == 0 {
		return "everyone calls everyone"
	}
	return fmt.Sprintf("each calls %d services", c.calls)
}

func svc(i int) string { return fmt.Sprintf("svc-%03d", i) }

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := (len(d)*p + 99) / 100
	return d[max(min(i, len(d))-1, 0)].Round(time.Millisecond)
}

// settle waits until no stream has had a response for c.settle, and
// returns when the last one came.
func settle(ctx context.Context, c config, proxies []*proxy, errs <-chan error) (time.Time, error) {
	var last time.Time
	err := waitFor(ctx, c.timeout, errs, func() bool {
		last = time.Time{}
		for _, p := range proxies {
			p.mu.Lock()
			if p.last.After(last) {
				last = p.last
			}
			p.mu.Unlock()
		}
		return time.Since(last) > c.settle
	})
	return last, err
}

// waitFor polls cond (there is no single event for "all N streams") until
// it holds, a stream fails, or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, errs <-chan error, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case err := <-errs:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
	}
	return nil
}

func report(servers []*server, when string) {
	for i, s := range servers {
		rss, hwm := memKB(s.cmd.Process.Pid)
		log.Printf("server %d %s: RSS %.0f MB (peak %.0f MB), CPU %.1fs total", i, when, rss/1024, hwm/1024, cpuSeconds(s.cmd.Process.Pid))
	}
	self, hwm := memKB(os.Getpid())
	log.Printf("bench process %s: RSS %.0f MB (peak %.0f MB), CPU %.1fs", when, self/1024, hwm/1024, cpuSeconds(os.Getpid()))
}

func memKB(pid int) (rss, hwm float64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}

// cpuSeconds is the user and system time of pid (clock ticks of 1/100 s).
func cpuSeconds(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startEtcd(bin, tmp string) (string, *exec.Cmd, error) {
	cl, err := freeAddr()
	if err != nil {
		return "", nil, err
	}
	pe, err := freeAddr()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "--name", "cpscale", "--data-dir", filepath.Join(tmp, "etcd"),
		"--listen-client-urls", "http://"+cl, "--advertise-client-urls", "http://"+cl,
		"--listen-peer-urls", "http://"+pe, "--initial-advertise-peer-urls", "http://"+pe,
		"--initial-cluster", "cpscale=http://"+pe, "--log-level", "error", "--quota-backend-bytes", "8589934592")
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start etcd (install Debian's etcd-server): %w", err)
	}
	for range 200 {
		if c, err := net.Dial("tcp", cl); err == nil {
			c.Close()
			return "http://" + cl, cmd, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop(cmd)
	return "", nil, errors.New("etcd did not listen")
}

func startServer(ctx context.Context, bin, dir, etcd string, extra []string) (*server, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := append([]string{"server", "--data-dir", dir, "--listen", addr, "--etcd-endpoints", etcd, "--log-level", "warn"}, extra...)
	cmd := exec.Command(bin, args...)
	logf, err := os.Create(dir + ".log")
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if len(extra) > 0 {
		// The first server's admin token is in the shared store.
		first := filepath.Dir(extra[1])
		b, err := os.ReadFile(filepath.Join(first, "admin-token"))
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, "admin-token"), b, 0o600); err != nil {
			return nil, err
		}
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, addr: addr, dir: dir}
	for range 600 {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		tok, err1 := os.ReadFile(filepath.Join(dir, "admin-token"))
		ca, err2 := os.ReadFile(filepath.Join(dir, "ca.pem"))
		if err1 == nil && err2 == nil && len(tok) > 0 && len(ca) > 0 {
			s.admin, s.caPEM = strings.TrimSpace(string(tok)), ca
			c, err := client.New(client.Config{Addr: addr, Token: s.admin, CAPEM: ca, Timeout: 5 * time.Second})
			if err == nil {
				if _, err := c.Services(ctx); err == nil {
					return s, nil
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop(cmd)
	return nil, fmt.Errorf("server in %s did not come up (see %s.log)", dir, dir)
}

func stop(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}
