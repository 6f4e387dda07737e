package cli

import (
	"context"
	"flag"
	"net"
	"runtime"
	"runtime/debug"
	"strconv"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/sidecar"
)

// runGateway runs the gateway NAME: a proxy with no app whose listeners
// come from the Gateway resource NAME, its identity the service NAME.
func runGateway(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "gateway", "gateway --name NAME --token-file FILE [flags]")
	name := fs.String("name", "", "the Gateway resource to serve; also the gateway's service identity")
	instance := fs.String("instance", "", "instance ID (default NAME-RANDOM)")
	listenIP := fs.String("listen-addr", "0.0.0.0", "IP the gateway's listeners bind")
	publicPort := fs.Int("public-port", 0, "port of the (refusing) mesh listener every proxy registers (0: any free port)")
	publicAddr := fs.String("public-addr", "127.0.0.1", "IP of that listener")
	advertise := fs.String("advertise", "", "IP peers dial (default --public-addr)")
	network := fs.String("network", "", "network this gateway is in (default \"default\"); a network listener serves only its own network")
	node := fs.String("node", "", "name of the host or task this gateway runs on, shown on the dashboard (default the host name)")
	server := fs.String("server", e.getenv("TRELLIS_ADDR"), "control plane host:port, or a comma-separated list of them; a DNS name means all its addresses (env TRELLIS_ADDR)")
	caFile := fs.String("ca-file", e.getenv("TRELLIS_CACERT"), "PEM roots that verify the control plane (env TRELLIS_CACERT)")
	tokenFile := fs.String("token-file", "", "file holding a service token for NAME (or env TRELLIS_TOKEN)")
	stateDir := fs.String("state-dir", "", "persist the last snapshot and certificate here")
	adminPort := adminPortFlag(fs)
	drain := fs.Duration("drain-timeout", 0, "how long shutdown waits for open connections (default 15s)")
	statsInterval := fs.Duration("stats-interval", 0, "how often to send the control plane a traffic summary (default 5s; match the server's --stats-interval)")
	pprof := fs.Bool("pprof", false, "serve the Go profiler under /debug/pprof on the admin listener (any local user can reach it)")
	cores := coresFlag(fs, 0, "a gateway serves many apps' clients")
	applyLimits := limitFlags(fs)
	applyTracing := tracingFlags(fs)
	mkLog := logFlags(fs, e, "info")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if err := identity.ValidateServiceName(*name); err != nil {
		return usageErr("--name: %v", err)
	}
	if net.ParseIP(*listenIP) == nil {
		return usageErr("--listen-addr %q: not an IP", *listenIP)
	}
	cfg := sidecar.Config{
		Service: *name, Instance: *instance,
		Gateway:       &sidecar.Gateway{ListenIP: *listenIP},
		PublicAddr:    net.JoinHostPort(*publicAddr, strconv.Itoa(*publicPort)),
		AdvertiseAddr: *advertise, Network: *network, Node: *node,
		Server: *server, ServerCAFile: *caFile, TokenFile: *tokenFile, StateDir: *stateDir,
		AdminAddr:     net.JoinHostPort("127.0.0.1", strconv.Itoa(*adminPort)),
		DrainTimeout:  *drain,
		StatsInterval: *statsInterval,
		Pprof:         *pprof,
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	applyLimits(&cfg.Limits, set)
	if err := applyTracing(&cfg, set); err != nil {
		return err
	}
	if cfg.TokenFile == "" {
		cfg.Token = e.getenv("TRELLIS_TOKEN")
	}
	if err := cfg.Validate(); err != nil {
		return usageErr("%s", oneLine(err))
	}
	proxyGC(e)
	if err := cores(e); err != nil {
		return err
	}
	log, err := mkLog()
	if err != nil {
		return err
	}
	cfg.Logger = log
	p, err := sidecar.New(cfg)
	if err != nil {
		return err
	}
	return runSidecar(ctx, p)
}

// proxyGC sets a proxy's garbage collection target, unless GOGC is set: a
// proxy's live heap is small and its garbage comes per connection, so
// collecting at 50 % growth instead of 100 % keeps its footprint down
// (the pass-through gateway's peak RSS under new-connection load) for
// little CPU.
func proxyGC(e *env) {
	if e.getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
}

// coresFlag adds --cores, the cores a data-plane process's goroutines run
// on at once (GOMAXPROCS), and returns what sets it before the process
// starts its work. GOMAXPROCS in the environment, when set, is the
// default instead of def.
func coresFlag(fs *flagSet, def int, why string) func(e *env) error {
	n := fs.Int("cores", def, "cores the process works on at once (GOMAXPROCS; 0: all that the machine or the container's CPU limit gives); "+why+"; env GOMAXPROCS, when set, is the default")
	return func(e *env) error {
		given := false
		fs.Visit(func(f *flag.Flag) { given = given || f.Name == "cores" })
		switch {
		case *n < 0 || *n > 1024:
			return usageErr("--cores %d: want 0 to 1024", *n)
		case !given && e.getenv("GOMAXPROCS") != "":
			return nil // the runtime read it at start
		case *n == 0:
			// Every CPU this process may run on, or fewer under a
			// container's CPU limit, kept up to date by the runtime.
			runtime.SetDefaultGOMAXPROCS()
		default:
			runtime.GOMAXPROCS(*n)
		}
		return nil
	}
}
