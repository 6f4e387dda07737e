package up

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/control"
	"github.com/trellis-mesh/trellis/internal/sidecar"
)

// Config configures `trellis up`.
type Config struct {
	// Dir holds trellis.yaml; commands run there.
	Dir string
	// DataDir is the control plane's data dir; default one per example
	// directory under Home/up (DataDirFor).
	DataDir string
	// Listen is the API address; default 127.0.0.1:7700.
	Listen string
	// Home holds the lock and record of the running up, and the examples'
	// data dirs; default ~/.trellis.
	Home string
	// Fresh removes the example's data dir first: a new CA, tokens and
	// store.
	Fresh bool
	// ContextFile, when set, is written with the server's address, CA and
	// token file while up runs, so that the CLI finds it with no setup.
	ContextFile string
	// ReadyTimeout bounds waiting for every service to be healthy; default
	// 3 minutes (a first `go run` downloads and builds).
	ReadyTimeout time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
	// Out receives the summary and the apps' output.
	Out io.Writer
	// Tracing, if set, is every sidecar's and gateway's span export.
	Tracing *sidecar.Tracing
}

// Run starts everything, prints where to reach it, and stops it all when
// ctx ends.
func Run(ctx context.Context, cfg Config) error {
	f, err := Load(cfg.Dir)
	if err != nil {
		return err
	}
	if cfg.Home == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return err
		}
		cfg.Home = filepath.Join(home, ".trellis")
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 3 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return err
	}
	log := cfg.Logger

	// One up at a time: the examples share the API's port and often
	// others. A second one fails here, before it touches anything.
	lock, swept, err := acquire(cfg.Home)
	if err != nil {
		return err
	}
	defer lock.release() // last: after every app has stopped
	if swept > 0 {
		fmt.Fprintf(cfg.Out, "Stopped %d app(s) left running by a trellis up that was killed.\n", swept)
	}
	apiAddr := cfg.Listen
	if apiAddr == "" {
		apiAddr = control.DefaultListen
	}
	if err := checkPorts(f, apiAddr); err != nil {
		return err
	}
	if cfg.DataDir == "" {
		cfg.DataDir = DataDirFor(cfg.Home, dir)
	}
	created, err := prepareDataDir(cfg.DataDir, dir, cfg.Fresh)
	if err != nil {
		return err
	}
	started := false
	defer func() {
		// A start that failed leaves nothing behind it did not find.
		if created && !started {
			os.RemoveAll(cfg.DataDir)
		}
	}()
	if err := lock.record(&runRecord{PID: os.Getpid(), Dir: dir, DataDir: cfg.DataDir, Listen: cfg.Listen, Started: time.Now()}); err != nil {
		return err
	}
	kept := "kept for the next run of this example; --fresh starts over"
	if created {
		kept = "new; " + kept
	}
	fmt.Fprintf(cfg.Out, "Data dir: %s (%s)\n", cfg.DataDir, kept)

	// Everything below stops when this function returns, in this order:
	// sidecars (they deregister and drain), then the apps, then the control
	// plane. ctx only triggers it; the stop itself must not be cut short.
	base := context.WithoutCancel(ctx)
	srvCtx, stopSrv := context.WithCancel(base)
	var srvWG sync.WaitGroup
	var cur *workloads // the apps and sidecars running now
	defer func() {
		if cur != nil {
			cur.stop()
		}
		stopSrv()
		srvWG.Wait()
	}()

	ccfg := control.Config{DataDir: cfg.DataDir, Listen: cfg.Listen, Logger: log, Out: io.Discard}
	if f.meshDNS() {
		ccfg.DNSListen = ServerDNS
	}
	srv, err := control.New(ccfg)
	if err != nil {
		return err
	}
	srvErr := make(chan error, 1)
	srvWG.Add(1)
	go func() { defer srvWG.Done(); srvErr <- srv.Run(srvCtx) }()
	select {
	case <-srv.Ready():
	case err := <-srvErr:
		return fmt.Errorf("control plane: %w", err)
	case <-ctx.Done():
		return nil
	}
	caFile := filepath.Join(cfg.DataDir, "ca.pem")
	tokenFile := filepath.Join(cfg.DataDir, control.AdminTokenFileName)
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	api, err := client.New(client.Config{Addr: srv.Addr(), Token: strings.TrimSpace(string(token)), CAPEM: caPEM})
	if err != nil {
		return err
	}
	if cfg.ContextFile != "" {
		if err := writeContext(cfg.ContextFile, srv.Addr(), caFile, tokenFile); err != nil {
			return err
		}
		defer os.Remove(cfg.ContextFile)
	}
	env := &upEnv{cfg: cfg, dir: dir, log: log, lock: lock, api: api, srvAddr: srv.Addr(), caFile: caFile}
	if err := applyFile(ctx, env, f); err != nil {
		return err
	}

	wl, err := startWorkloads(ctx, env, f)
	if wl != nil {
		cur = wl
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting: not a failure
		}
		return err
	}
	started = true
	printSummary(cfg.Out, srv.Addr(), f, cur.adminAddrs())
	return watch(ctx, env, &cur, srvErr)
}

// ServerDNS is where trellis up's control plane answers DNS for the
// mesh's domains (Consul's DNS port).
const ServerDNS = "127.0.0.1:8600"

// gatewayNetwork is the network trellis up runs gateway g in: the one its
// network listener serves, or else the one network all the services it
// routes to are in (an ingress in front of its services), or else the
// default network.
func gatewayNetwork(f *File, g *v1.GatewaySpec) string {
	for _, l := range g.Listeners {
		if l.Protocol == v1.GatewayNetwork {
			return l.Network
		}
	}
	nets := map[string]bool{}
	for _, svc := range g.Services() {
		for _, s := range f.Services {
			if s.Name == svc {
				nets[v1.EffectiveNetwork(s.Network)] = true
			}
		}
	}
	if len(nets) == 1 {
		for n := range nets {
			return n
		}
	}
	return ""
}

// edgeConfig is replica r's edge listener of e (nil: none), on loopback.
func edgeConfig(dir string, e *EdgeSpec, r int) *sidecar.Edge {
	if e == nil {
		return nil
	}
	c := &sidecar.Edge{
		Listen: "127.0.0.1:" + strconv.Itoa(e.Port+r), Mode: e.Mode, CertSource: e.CertSource, DNSNames: e.DNSNames,
		AcceptProxyProtocol: e.AcceptProxyProtocol, SendProxyProtocol: e.SendProxyProtocol,
	}
	if e.CertFile != "" {
		c.CertFile, c.KeyFile = filepath.Join(dir, e.CertFile), filepath.Join(dir, e.KeyFile)
	}
	return c
}

// serviceToken returns a token file for service, making the token once.
func serviceToken(ctx context.Context, api *client.Client, dir, service string) (string, error) {
	path := filepath.Join(dir, service)
	// The token lives in the data dir beside the store that knows it, so
	// the two are reset together.
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
		return path, nil
	}
	t, err := api.CreateToken(ctx, v1.TokenRequest{Services: []string{service}, Description: "trellis up: " + service})
	if err != nil {
		return "", fmt.Errorf("token for %s: %w", service, err)
	}
	if err := os.WriteFile(path, []byte(t.Secret+"\n"), 0o600); err != nil {
		return "", err
	}
	return path, nil
}

func writeContext(path, addr, caFile, tokenFile string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(map[string]any{"addr": addr, "caFile": caFile, "tokenFile": tokenFile, "pid": os.Getpid()}, "", "  ")
	return os.WriteFile(path, b, 0o600)
}

// waitHealthy waits until every service has its replicas registered by
// this run's sidecars (ours) and healthy, or a child exits, or the
// timeout passes. A kept data dir's store may still hold a killed run's
// instances, on ports nobody serves now, until their leases expire: they
// do not count.
func waitHealthy(ctx context.Context, api *client.Client, want map[string]int, ours func(v1.Instance) bool, timeout time.Duration, children []*child, sidecarErr chan error) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		for _, c := range children {
			select {
			case <-c.done:
				return fmt.Errorf("%s exited before it was healthy: %v", c.name, c.err)
			default:
			}
		}
		select {
		case err := <-sidecarErr:
			return err
		default:
		}
		var missing []string
		for svc, n := range want {
			ins, err := api.Instances(ctx, svc)
			if err != nil {
				missing = append(missing, fmt.Sprintf("%s (%v)", svc, err))
				continue
			}
			have := 0
			for _, in := range ins {
				if in.Healthy && ours(in) {
					have++
				}
			}
			if have < n {
				missing = append(missing, fmt.Sprintf("%s (%d/%d healthy)", svc, have, n))
			}
		}
		if len(missing) == 0 {
			return nil
		}
		sort.Strings(missing)
		last = strings.Join(missing, ", ")
		if time.Now().After(deadline) {
			return fmt.Errorf("not healthy after %v: %s", timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func printSummary(w io.Writer, addr string, f *File, admins map[string]string) {
	fmt.Fprintf(w, "\nTrellis is up.\n")
	fmt.Fprintf(w, "  API:      https://%s  (the trellis CLI in another terminal finds it by itself)\n", addr)
	fmt.Fprintf(w, "  Dashboard: https://%s/ui/  (log in with a token from `trellis token create --viewer`)\n", addr)
	if f.Client != nil {
		for _, u := range f.Client.Upstreams {
			fmt.Fprintf(w, "  %-9s curl http://127.0.0.1:%d%s   (local upstream listener, as service %q)\n", u.Service+":", u.Port, f.tryPath(u.Service), f.Client.Service)
		}
	}
	for _, s := range f.Services {
		if s.Edge == nil || s.Edge.AcceptProxyProtocol {
			continue // behind a gateway: clients go through it
		}
		what := "TLS by the sidecar"
		if s.Edge.Mode == "passthrough" {
			what = "TLS by the app, passed through"
		}
		fmt.Fprintf(w, "  %-9s curl -k https://127.0.0.1:%d%s   (edge listener of %s, %s)\n", s.Name+":", s.Edge.Port, s.tryPath(), s.Name, what)
	}
	for _, r := range f.resources {
		if r.Kind != v1.KindGateway {
			continue
		}
		for _, l := range r.Gateway.Listeners {
			switch l.Protocol {
			case v1.GatewayHTTP, v1.GatewayHTTPS:
				path := "/"
				if len(l.Routes) > 0 {
					path = f.ingressPath(l.Routes[0])
				}
				k := ""
				if l.Protocol == v1.GatewayHTTPS {
					k = "-k "
				}
				fmt.Fprintf(w, "  %-9s curl %s%s://127.0.0.1:%d%s   (ingress of gateway %s)\n", "ingress:", k, l.Protocol, l.Port, path, r.Name)
			case v1.GatewayTLSPassthrough:
				for _, t := range l.Targets {
					fmt.Fprintf(w, "  %-9s curl -k --resolve %s:%d:127.0.0.1 https://%s:%d%s   (TLS pass-through of gateway %s to %s)\n",
						"pass:", t.SNI, l.Port, t.SNI, l.Port, f.tryPath(t.Service), r.Name, t.Service)
				}
			}
		}
	}
	fmt.Fprintf(w, "  Services: ")
	for i, s := range f.Services {
		if i > 0 {
			fmt.Fprint(w, ", ")
		}
		fmt.Fprintf(w, "%s", s.Name)
		if s.Version != "" {
			fmt.Fprintf(w, " %s", s.Version)
		}
		if s.Replicas > 1 {
			fmt.Fprintf(w, " x%d", s.Replicas)
		}
	}
	fmt.Fprintf(w, "\n  Proxies:  ")
	for i, id := range slices.Sorted(maps.Keys(admins)) {
		if i > 0 {
			fmt.Fprint(w, "\n            ")
		}
		fmt.Fprintf(w, "%-14s admin http://%s/certs  /config  /metrics", id, admins[id])
	}
	if f.meshDNS() {
		name := f.Services[0].Name + "." + f.Mesh.DNS.Domains[0]
		host, port, _ := net.SplitHostPort(ServerDNS)
		fmt.Fprintf(w, "\n  DNS:      dig @%s -p %s %s   (the control plane's DNS, for callers outside the mesh)", host, port, name)
	}
	try := "trellis get instances"
	if len(f.Intentions) > 0 {
		in := f.Intentions[len(f.Intentions)-1]
		try += fmt.Sprintf("; trellis intention deny %s %s", in.Source, in.Destination)
	}
	// Said once, plainly: trellis proxy and trellis gateway bind their
	// edge and gateway listeners to every interface unless told otherwise;
	// trellis up never does.
	fmt.Fprintf(w, "\n  Bound to: 127.0.0.1 only (API, mesh ports, edge, ingress and admin listeners): nothing here is reachable from another host")
	fmt.Fprintf(w, "\n  Try:      %s\nPress Ctrl-C to stop.\n", try)
}

// tryPath is the path the summary shows for calls to service: its first
// entry's Try, or /.
func (f *File) tryPath(service string) string {
	for i := range f.Services {
		if f.Services[i].Name == service {
			return f.Services[i].tryPath()
		}
	}
	return "/"
}

// ingressPath is the path a client gives gateway route r to reach its
// service's Try path: the route's prefix, and the Try path past the
// rewritten prefix (/hello-service/ + hello/world for a route that
// rewrites /hello-service/ to /). A Try path the route cannot reach
// leaves the prefix alone.
func (f *File) ingressPath(r v1.GatewayRoute) string {
	prefix := r.PathPrefix
	if prefix == "" {
		prefix = "/"
	}
	try := f.tryPath(r.Service)
	switch {
	case r.RewritePrefix != "" && strings.HasPrefix(try, r.RewritePrefix):
		return strings.TrimSuffix(prefix, "/") + "/" + strings.TrimPrefix(strings.TrimPrefix(try, r.RewritePrefix), "/")
	case r.RewritePrefix == "" && strings.HasPrefix(try, prefix):
		return try
	}
	return strings.TrimSuffix(prefix, "/") + "/"
}

// child is an app process, in its own process group so that stopping it
// also stops what it started (go run starts the real binary as a child).
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func startChild(dir, name string, argv []string, env map[string]string, out io.Writer) (*child, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	groupChild(cmd)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, strings.Join(argv, " "), err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	// Both end with the child, and done waits for both: whoever waits
	// for the child waits for its output to be copied too.
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintf(out, "[%s] %s\n", name, sc.Text())
		}
		io.Copy(io.Discard, pr) // a line too long for the scanner: drain the rest
	}()
	go func() {
		c.err = cmd.Wait()
		pw.Close()
		<-scanned
		close(c.done)
	}()
	return c, nil
}

// stopChildren sends SIGTERM to every child's process group, then SIGKILL
// to what is left after 3 seconds.
func stopChildren(children []*child, log *slog.Logger) {
	for _, c := range children {
		_ = signalGroup(c.cmd, syscall.SIGTERM)
	}
	deadline := time.After(3 * time.Second)
	for _, c := range children {
		select {
		case <-c.done:
		case <-deadline:
		}
	}
	for _, c := range children {
		// The group may outlive its leader (go run's child); kill it anyway.
		if err := signalGroup(c.cmd, syscall.SIGKILL); err == nil {
			log.Debug("killed process group", "name", c.name)
		} else if !errors.Is(err, syscall.ESRCH) {
			log.Warn("kill process group", "name", c.name, "err", err)
		}
	}
}
