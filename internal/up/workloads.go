package up

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshdns"
	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
	"github.com/trellis-mesh/trellis/internal/sidecar"
	"github.com/trellis-mesh/trellis/internal/topology"
)

// upEnv is what starting the example's workloads needs of the running up:
// its configuration, the control plane, and where things are.
type upEnv struct {
	cfg     Config
	dir     string // the example directory, absolute
	log     *slog.Logger
	lock    *runLock
	api     *client.Client
	srvAddr string
	caFile  string
}

// workloads are the apps of one version of trellis.yaml and their
// sidecars (and the client's and the gateways'): started together,
// stopped together, when up ends or the file changes.
type workloads struct {
	log      *slog.Logger
	ctx      context.Context // the sidecars'
	cancel   context.CancelFunc
	wg       sync.WaitGroup // the sidecars' Run
	children []*child
	// null is the client sidecar's stand-in app, served by nullLoop.
	null     net.Listener
	nullLoop sync.WaitGroup
	// errs gets a sidecar's failure.
	errs chan error

	mu     sync.Mutex
	admins map[string]string // sidecar -> admin address
}

// startWorkloads starts f's apps and sidecars and waits until they are
// healthy and serving. On an error the workloads returned (never nil)
// must still be stopped.
func startWorkloads(ctx context.Context, env *upEnv, f *File) (*workloads, error) {
	w := &workloads{log: env.log, admins: map[string]string{}, errs: make(chan error, 1)}
	// The sidecars stop when stop says, not when ctx ends: they drain
	// before their apps stop.
	w.ctx, w.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return w, w.start(ctx, env, f)
}

// stop stops the sidecars (they deregister and drain), then the apps.
func (w *workloads) stop() {
	w.cancel()
	w.wg.Wait()
	stopChildren(w.children, w.log)
	if w.null != nil {
		w.null.Close()
		w.nullLoop.Wait()
	}
}

// adminAddrs returns each sidecar's admin address.
func (w *workloads) adminAddrs() map[string]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]string, len(w.admins))
	for k, v := range w.admins {
		out[k] = v
	}
	return out
}

func (w *workloads) start(ctx context.Context, env *upEnv, f *File) error {
	tokDir := filepath.Join(env.cfg.DataDir, "tokens")
	if err := os.MkdirAll(tokDir, 0o700); err != nil {
		return err
	}
	// Children are started before their sidecars; a sidecar reports its app
	// unhealthy until it answers.
	type sc struct {
		cfg sidecar.Config
		id  string
		// needs are the services of this run it calls: up is up once it
		// has an endpoint of this run for each.
		needs []string
	}
	var sidecars []sc
	want := map[string]int{}
	numbered := map[string]int{} // instances are numbered across versions
	callPorts := map[string]int{}
	for _, s := range f.Services {
		if _, ok := callPorts[s.Name]; !ok {
			callPorts[s.Name] = s.callPort()
		}
	}
	byName := 0 // sidecars that call upstreams by name, each with loopback addresses of its own
	for _, s := range f.Services {
		tok, err := serviceToken(ctx, env.api, tokDir, s.Name)
		if err != nil {
			return err
		}
		for r := 0; r < max(1, s.Replicas); r++ {
			numbered[s.Name]++
			inst := fmt.Sprintf("%s-%d", s.Name, numbered[s.Name])
			port := s.Port + r
			vars := map[string]string{"PORT": strconv.Itoa(port), "TRELLIS_SERVICE": s.Name, "TRELLIS_INSTANCE": inst,
				"TRELLIS_VERSION": s.Version, "TRELLIS_NETWORK": v1.EffectiveNetwork(s.Network)}
			var ups []sidecar.Upstream
			var dns *sidecar.DNS
			for j, u := range s.Upstreams {
				addr := "127.0.0.1:" + strconv.Itoa(u.Port)
				if u.Port == 0 {
					// Called by name: the listener takes the service's
					// port on an address of this sidecar's own, which
					// its DNS answers (one machine, many "hosts").
					if dns == nil {
						byName++
						dns = &sidecar.DNS{Listen: fmt.Sprintf("127.77.%d.53:1053", byName), Mode: meshdns.ModeLocal}
						vars["TRELLIS_DNS"] = dns.Listen
					}
					addr = fmt.Sprintf("127.77.%d.%d:%d", byName, j+1, callPorts[u.Service])
				}
				vars["UPSTREAM_"+identity.EnvName(u.Service)] = addr
				ups = append(ups, sidecar.Upstream{Service: u.Service, Listen: addr})
			}
			for k, v := range s.Env {
				vars[k] = v
			}
			c, err := startChild(env.dir, inst, s.Command, vars, env.cfg.Out)
			if err != nil {
				return err
			}
			w.children = append(w.children, c)
			if err := env.lock.addGroup(inst, c.cmd.Process.Pid); err != nil {
				return err
			}
			sidecars = append(sidecars, sc{id: inst, needs: upstreamServices(ups), cfg: sidecar.Config{
				Service: s.Name, Version: s.Version, Instance: inst,
				AppAddr: "127.0.0.1:" + strconv.Itoa(port), Upstreams: ups, Network: s.Network, DNS: dns,
				Edge:   edgeConfig(env.dir, s.Edge, r),
				Server: env.srvAddr, ServerCAFile: env.caFile, TokenFile: tok,
				StateDir:       filepath.Join(env.cfg.DataDir, "proxies", inst),
				HealthHTTPPath: s.Health.HTTP, DrainTimeout: 2 * time.Second,
			}})
			want[s.Name]++
		}
	}
	if f.Client != nil {
		tok, err := serviceToken(ctx, env.api, tokDir, f.Client.Service)
		if err != nil {
			return err
		}
		var ups []sidecar.Upstream
		for _, u := range f.Client.Upstreams {
			ups = append(ups, sidecar.Upstream{Service: u.Service, Listen: "127.0.0.1:" + strconv.Itoa(u.Port)})
		}
		// The client sidecar has no app. Its registration needs one, so a
		// null app stands in: it accepts (the health check passes) and
		// closes at once, so whatever reaches it through the mesh gets
		// nothing, not even this machine's admin endpoints.
		null, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		// Its accept loop retries running out of descriptors rather
		// than ending, and stops when stop closes the listener.
		w.null = null
		w.nullLoop.Go(func() {
			_ = (&netconn.Acceptor{Name: "null-app", Logger: env.log}).Serve(null, func(c net.Conn) { c.Close() })
		})
		sidecars = append(sidecars, sc{id: f.Client.Service, needs: upstreamServices(ups), cfg: sidecar.Config{
			Service: f.Client.Service, Instance: f.Client.Service + "-local", AppAddr: null.Addr().String(),
			Upstreams: ups, Server: env.srvAddr, ServerCAFile: env.caFile, TokenFile: tok, DrainTimeout: time.Second,
			StateDir: filepath.Join(env.cfg.DataDir, "proxies", f.Client.Service+"-local"),
		}})
	}
	// Each Gateway resource gets its gateway, on loopback.
	for _, r := range f.resources {
		if r.Kind != v1.KindGateway {
			continue
		}
		tok, err := serviceToken(ctx, env.api, tokDir, r.Name)
		if err != nil {
			return err
		}
		network := gatewayNetwork(f, r.Gateway)
		sidecars = append(sidecars, sc{id: r.Name, needs: r.Gateway.Services(), cfg: sidecar.Config{
			Service: r.Name, Instance: r.Name + "-local", Gateway: &sidecar.Gateway{ListenIP: "127.0.0.1"}, Network: network,
			Server: env.srvAddr, ServerCAFile: env.caFile, TokenFile: tok, DrainTimeout: time.Second,
			StateDir: filepath.Join(env.cfg.DataDir, "proxies", r.Name),
		}})
		want[r.Name]++
	}
	w.errs = make(chan error, len(sidecars))
	// Each sidecar says once when it serves: the summary waits for all,
	// the client's upstream listeners too, which no health check covers.
	sidecarReady := make(chan string, len(sidecars))
	publics := map[string]string{} // instance -> public (mTLS) address, under w.mu
	// A kept data dir's store may hold this instance as the last run left
	// it, healthy at the same address (a restarted sidecar takes its port
	// and its registration back): only a registration made since counts.
	since := time.Now()
	var running []runningSidecar
	for _, s := range sidecars {
		s.cfg.Logger = env.log
		s.cfg.Registry = prometheus.NewRegistry()
		if env.cfg.Tracing != nil {
			t := *env.cfg.Tracing
			s.cfg.Tracing = &t
		}
		id := s.id
		inst := s.cfg.Instance
		s.cfg.OnReady = func(admin, public string) {
			w.mu.Lock()
			w.admins[id] = admin
			publics[inst] = public
			w.mu.Unlock()
			sidecarReady <- id
		}
		p, err := sidecar.New(s.cfg)
		if err != nil {
			return fmt.Errorf("sidecar %s: %w", s.id, err)
		}
		running = append(running, runningSidecar{id: s.id, p: p, needs: s.needs})
		w.wg.Go(func() {
			if err := p.Run(w.ctx); err != nil {
				w.errs <- fmt.Errorf("sidecar %s: %w", s.id, err)
			}
		})
	}

	fmt.Fprintf(env.cfg.Out, "Starting %d services (a first run builds them; this can take a minute)...\n", len(f.Services))
	if err := waitHealthy(ctx, env.api, want, func(in v1.Instance) bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return publics[in.ID] != "" && publics[in.ID] == net.JoinHostPort(in.Address, strconv.Itoa(in.Port)) && !in.RegisteredAt.Before(since)
	}, env.cfg.ReadyTimeout, w.children, w.errs); err != nil {
		return err
	}
	for range sidecars {
		select {
		case <-sidecarReady:
		case err := <-w.errs:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(env.cfg.ReadyTimeout):
			return fmt.Errorf("a sidecar did not become ready within %v", env.cfg.ReadyTimeout)
		}
	}
	// Registered and healthy is not yet callable: each caller needs a
	// snapshot with this run's endpoints, which the control plane pushes a
	// moment later.
	w.mu.Lock()
	ours := map[string]bool{}
	for _, a := range publics {
		ours[a] = true
	}
	w.mu.Unlock()
	return waitSeen(ctx, running, want, ours, env.cfg.ReadyTimeout, w.errs)
}

// runningSidecar is a sidecar of this run and the services it calls.
type runningSidecar struct {
	id    string
	p     *sidecar.Proxy
	needs []string
}

// upstreamOf returns snap's upstream svc; nil before the first snapshot.
func upstreamOf(snap *topology.Snapshot, svc string) *topology.Upstream {
	if snap == nil {
		return nil
	}
	return snap.Upstream(svc)
}

// upstreamServices returns the services ups call.
func upstreamServices(ups []sidecar.Upstream) []string {
	var out []string
	for _, u := range ups {
		out = append(out, u.Service)
	}
	return out
}

// waitSeen waits until every sidecar's snapshot has, for each service of
// this run it calls, an endpoint at one of this run's addresses (ours).
func waitSeen(ctx context.Context, sidecars []runningSidecar, run map[string]int, ours map[string]bool, timeout time.Duration, errs chan error) error {
	deadline := time.Now().Add(timeout)
	for {
		var missing []string
		for _, s := range sidecars {
			snap := s.p.Snapshot()
			for _, svc := range s.needs {
				if run[svc] == 0 {
					continue // not run here: nothing to wait for
				}
				seen := false
				if u := upstreamOf(snap, svc); u != nil {
					for _, e := range u.Endpoints {
						seen = seen || ours[net.JoinHostPort(e.Address, strconv.Itoa(e.Port))]
					}
				}
				if !seen {
					missing = append(missing, s.id+" -> "+svc)
				}
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v, sidecars still have no endpoint for: %s", timeout, strings.Join(missing, ", "))
		}
		select {
		case err := <-errs:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
