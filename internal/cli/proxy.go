package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/trellis-mesh/trellis/internal/sidecar"
)

func runProxy(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "proxy", "proxy --service NAME --app-port P [--upstream SERVICE:PORT ...] [flags]")
	configFile := fs.String("config", "", "read the proxy's configuration from this YAML file; flags override it")
	service := fs.String("service", "", "the app's service name")
	version := fs.String("version", "", "version label of this instance")
	instance := fs.String("instance", "", "instance ID (default SERVICE-RANDOM)")
	appPort := fs.Int("app-port", 0, "port of the app on --app-host")
	appHost := fs.String("app-host", "127.0.0.1", "host of the app")
	publicPort := fs.Int("public-port", 0, "port of the inbound mTLS listener (0: any free port)")
	publicAddr := fs.String("public-addr", "127.0.0.1", "IP the inbound mTLS listener binds")
	advertise := fs.String("advertise", "", "IP peers dial (default --public-addr, or 127.0.0.1 if unspecified); auto: this host's first non-loopback IPv4, as in an ECS task or a pod")
	network := fs.String("network", "", "network this instance is in (default \"default\")")
	node := fs.String("node", "", "name of the host or task this proxy runs on, shown on the dashboard (default the host name)")
	var upstreams listFlag
	fs.Var(&upstreams, "upstream", "SERVICE:PORT or SERVICE:HOST:PORT local listener for an upstream (repeatable)")
	server := fs.String("server", e.getenv("TRELLIS_ADDR"), "control plane host:port, or a comma-separated list of them; a DNS name means all its addresses (env TRELLIS_ADDR)")
	caFile := fs.String("ca-file", e.getenv("TRELLIS_CACERT"), "PEM roots that verify the control plane (env TRELLIS_CACERT)")
	tokenFile := fs.String("token-file", "", "file holding the service token (or env TRELLIS_TOKEN)")
	stateDir := fs.String("state-dir", "", "persist the last snapshot and certificate here")
	adminPort := adminPortFlag(fs)
	healthPath := fs.String("health-path", "", "check the app with HTTP GET of this path (default: TCP connect)")
	healthInterval := fs.Duration("health-interval", 0, "interval between app health checks (default 1s)")
	drain := fs.Duration("drain-timeout", 0, "how long shutdown waits for open connections (default 15s)")
	statsInterval := fs.Duration("stats-interval", 0, "how often to send the control plane a traffic summary (default 5s; match the server's --stats-interval)")
	edgePort := fs.Int("edge-port", -1, "port of an edge listener for clients outside the mesh (0: any free port; default none)")
	edgeAddr := fs.String("edge-addr", "0.0.0.0", "IP the edge listener binds")
	edgeMode := fs.String("edge-mode", "", "edge listener mode: terminate (TLS ends here, default) or passthrough (the app terminates TLS)")
	edgeCert := fs.String("edge-cert", "", "edge certificate chain PEM file (reloaded when it changes)")
	edgeKey := fs.String("edge-key", "", "edge private key PEM file")
	edgeSource := fs.String("edge-cert-source", "", "edge certificate source: files (--edge-cert/--edge-key), mesh (issued by the mesh CA for --edge-dns-name, which the Service must allow in spec.dnsNames) or self-signed (default: files when --edge-cert is set, else self-signed)")
	edgeDNS := fs.String("edge-dns-name", e.getenv("TRELLIS_EDGE_DNS_NAME"), "comma-separated DNS names for a mesh-issued or self-signed edge certificate (env TRELLIS_EDGE_DNS_NAME)")
	edgeClientCA := fs.String("edge-client-ca", "", "require edge clients to present a certificate from these PEM roots")
	edgeAcceptPP := fs.Bool("edge-accept-proxy-protocol", false, "edge connections start with a PROXY protocol header (from a gateway or load balancer)")
	var edgeTrusted listFlag
	fs.Var(&edgeTrusted, "edge-trusted-proxy", "CIDR or address of a hop in front of the edge listener whose X-Forwarded-For and other forwarding fields are kept (repeatable; default none)")
	edgeSendPP := fs.Bool("edge-send-proxy-protocol", false, "send the edge client's address to the app in a PROXY protocol v2 header")
	ingressPort := fs.Int("ingress-port", 0, "transparent mode: port on 0.0.0.0 where redirect rules send callers of the app's port (with --egress-port; see trellis redirect)")
	egressPort := fs.Int("egress-port", 0, "transparent mode: port on 127.0.0.1 where redirect rules send the app's outbound connections; they reach only the --upstream services")
	dnsListen := fs.String("dns-listen", "", "serve the app's DNS on this address, UDP and TCP, such as 127.0.0.1:15053 or 127.0.0.1:53 (off when empty): its upstreams by their mesh names, NXDOMAIN for other mesh names, the rest forwarded to the host's resolver")
	dnsMode := fs.String("dns-mode", "", "what mesh names answer: vip (default: a virtual IP in 240.240.0.0/16, for transparent mode) or local (127.0.0.1 where the upstream's listener is on 127.0.0.1 at the Service's port)")
	dnsUpstream := fs.String("dns-upstream", "", "the host's resolver, IP or IP:port, that names outside the mesh go to (default: the first nameserver of /etc/resolv.conf, read at start)")
	pprof := fs.Bool("pprof", false, "serve the Go profiler under /debug/pprof on the admin listener (any local user can reach it)")
	cores := coresFlag(fs, 1, "one suits a sidecar, which serves one app, and costs less CPU per request than two")
	applyLimits := limitFlags(fs)
	applyTracing := tracingFlags(fs)
	mkLog := logFlags(fs, e, "info")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	var cfg sidecar.Config
	if *configFile != "" {
		if err := loadStrictYAML(*configFile, &cfg); err != nil {
			return usageErr("%v", err)
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	override := func(name string, apply func()) {
		if set[name] || *configFile == "" {
			apply()
		}
	}
	override("service", func() { cfg.Service = *service })
	override("version", func() { cfg.Version = *version })
	override("instance", func() { cfg.Instance = *instance })
	if set["app-port"] || set["app-host"] || cfg.AppAddr == "" {
		if *appPort <= 0 || *appPort > 65535 {
			return usageErr("--app-port: required, 1-65535")
		}
		cfg.AppAddr = net.JoinHostPort(*appHost, strconv.Itoa(*appPort))
	}
	if set["public-port"] || set["public-addr"] || cfg.PublicAddr == "" {
		cfg.PublicAddr = net.JoinHostPort(*publicAddr, strconv.Itoa(*publicPort))
	}
	override("advertise", func() { cfg.AdvertiseAddr = *advertise })
	if cfg.AdvertiseAddr == "auto" {
		ip, err := firstIPv4()
		if err != nil {
			return usageErr("--advertise auto: %v", err)
		}
		cfg.AdvertiseAddr = ip
	}
	override("network", func() { cfg.Network = *network })
	override("node", func() { cfg.Node = *node })
	if len(upstreams) > 0 {
		cfg.Upstreams = nil
		for _, u := range upstreams {
			up, err := sidecar.ParseUpstream(u)
			if err != nil {
				return usageErr("--upstream: %v", err)
			}
			cfg.Upstreams = append(cfg.Upstreams, up)
		}
	}
	if set["server"] || cfg.Server == "" {
		cfg.Server = *server
	}
	if set["ca-file"] || cfg.ServerCAFile == "" {
		cfg.ServerCAFile = *caFile
	}
	override("token-file", func() { cfg.TokenFile = *tokenFile })
	if cfg.TokenFile == "" {
		cfg.Token = e.getenv("TRELLIS_TOKEN")
	}
	override("state-dir", func() { cfg.StateDir = *stateDir })
	if set["admin-port"] || cfg.AdminAddr == "" {
		cfg.AdminAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(*adminPort))
	}
	override("health-path", func() { cfg.HealthHTTPPath = *healthPath })
	override("health-interval", func() { cfg.HealthInterval = *healthInterval })
	override("drain-timeout", func() { cfg.DrainTimeout = *drain })
	override("stats-interval", func() { cfg.StatsInterval = *statsInterval })
	override("pprof", func() { cfg.Pprof = *pprof })
	applyLimits(&cfg.Limits, set)
	if err := applyTracing(&cfg, set); err != nil {
		return err
	}
	if *edgePort >= 0 {
		if *edgePort > 65535 {
			return usageErr("--edge-port: %d is not 0-65535", *edgePort)
		}
		cfg.Edge = &sidecar.Edge{
			Listen: net.JoinHostPort(*edgeAddr, strconv.Itoa(*edgePort)),
			Mode:   *edgeMode, CertSource: *edgeSource, CertFile: *edgeCert, KeyFile: *edgeKey, ClientCAFile: *edgeClientCA,
			AcceptProxyProtocol: *edgeAcceptPP, SendProxyProtocol: *edgeSendPP, TrustedProxies: edgeTrusted,
		}
		for _, n := range strings.Split(*edgeDNS, ",") {
			if n = strings.TrimSpace(n); n != "" {
				cfg.Edge.DNSNames = append(cfg.Edge.DNSNames, n)
			}
		}
	} else {
		for _, name := range []string{"edge-addr", "edge-mode", "edge-cert", "edge-key", "edge-cert-source", "edge-client-ca", "edge-accept-proxy-protocol", "edge-send-proxy-protocol", "edge-trusted-proxy"} {
			if set[name] {
				return usageErr("--%s needs --edge-port", name)
			}
		}
	}
	if set["ingress-port"] || set["egress-port"] {
		if !set["ingress-port"] || !set["egress-port"] {
			return usageErr("--ingress-port and --egress-port go together (transparent mode)")
		}
		cfg.Transparent = &sidecar.Transparent{
			IngressListen: net.JoinHostPort("0.0.0.0", strconv.Itoa(*ingressPort)),
			EgressListen:  net.JoinHostPort("127.0.0.1", strconv.Itoa(*egressPort)),
		}
	}
	if set["dns-listen"] || set["dns-mode"] || set["dns-upstream"] {
		if cfg.DNS == nil {
			cfg.DNS = &sidecar.DNS{}
		}
		override("dns-listen", func() { cfg.DNS.Listen = *dnsListen })
		override("dns-mode", func() { cfg.DNS.Mode = *dnsMode })
		override("dns-upstream", func() { cfg.DNS.Upstream = *dnsUpstream })
		if cfg.DNS.Listen == "" {
			return usageErr("--dns-mode and --dns-upstream need --dns-listen")
		}
	}
	if err := cfg.Validate(); err != nil {
		return usageErr("%s", oneLine(err))
	}
	log, err := mkLog()
	if err != nil {
		return err
	}
	cfg.Logger = log
	if err := cores(e); err != nil {
		return err
	}
	p, err := sidecar.New(cfg)
	if err != nil {
		return err
	}
	return runSidecar(ctx, p)
}

// adminPortFlag adds --admin-port: sidecar.DefaultAdminPort unless told,
// so that `trellis ready` finds the proxy with no flag either.
func adminPortFlag(fs *flagSet) *int {
	return fs.Int("admin-port", sidecar.DefaultAdminPort, "port of the admin listener on 127.0.0.1 (/ready, /metrics, /config, /certs); the default, which trellis ready checks, suits one proxy per network namespace (a task, a pod, a host); 0 takes any free port, for several proxies in one namespace")
}

// runSidecar runs p and says what to do when its admin port is taken.
func runSidecar(ctx context.Context, p *sidecar.Proxy) error {
	err := p.Run(ctx)
	if errors.Is(err, sidecar.ErrAdminAddrInUse) {
		return fmt.Errorf("%w (another proxy in this network namespace?): give each proxy its own --admin-port, or --admin-port 0 for any free port", err)
	}
	return err
}

// loadStrictYAML decodes one YAML document into v, rejecting unknown fields
// and naming the file and line of any problem.
func loadStrictYAML(file string, v any) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %v", file, err)
	}
	return nil
}

// firstIPv4 is the first IPv4 address of an up, non-loopback interface:
// in an ECS task (awsvpc) or a pod, the one address peers can reach.
func firstIPv4() (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", err
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLinkLocalUnicast() {
				return n.IP.String(), nil
			}
		}
	}
	return "", errors.New("no up, non-loopback IPv4 interface")
}
