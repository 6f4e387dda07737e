//go:build !proxyonly

package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/control"
)

func defaultDataDir(e *env) string {
	if d := e.getenv("TRELLIS_DATA_DIR"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".trellis"
	}
	return filepath.Join(home, ".trellis", "server")
}

// etcdPasswordEnv holds the etcd password when no file is given.
const etcdPasswordEnv = "TRELLIS_ETCD_PASSWORD"

// etcdPassword reads the etcd password from file, or else from the
// environment. The file's last line break is not part of the password.
func etcdPassword(e *env, file string) (string, error) {
	env := e.getenv(etcdPasswordEnv)
	if file == "" {
		return env, nil
	}
	if env != "" {
		return "", usageErr("etcd password: both --etcd-password-file and %s are set; give one", etcdPasswordEnv)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", usageErr("--etcd-password-file: %v", err)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if pw == "" {
		return "", usageErr("--etcd-password-file %s: empty", file)
	}
	return pw, nil
}

func runServer(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "server", "server [flags]")
	var cfg control.Config
	fs.StringVar(&cfg.DataDir, "data-dir", defaultDataDir(e), "directory for the embedded etcd, the CA and the first admin token (kept 0700; refused if others may write to it)")
	fs.StringVar(&cfg.Listen, "listen", control.DefaultListen, "HTTPS address of the API and the proxy stream")
	endpoints := fs.String("etcd-endpoints", "", "comma-separated etcd client URLs (http:// or https://); empty runs an embedded etcd that only this server can reach")
	fs.StringVar(&cfg.EtcdCAFile, "etcd-ca-file", "", "PEM CAs that verify the etcd servers (https:// endpoints; default: the system's roots)")
	fs.StringVar(&cfg.EtcdCertFile, "etcd-cert-file", "", "client certificate (PEM) for an etcd run with --client-cert-auth")
	fs.StringVar(&cfg.EtcdKeyFile, "etcd-key-file", "", "private key (PEM) of --etcd-cert-file")
	fs.StringVar(&cfg.EtcdUsername, "etcd-username", "", "etcd user to log in as, on an etcd with authentication enabled")
	passwordFile := fs.String("etcd-password-file", "", "file holding the password of --etcd-username (or env "+etcdPasswordEnv+"; never a flag, which ps would show)")
	fs.StringVar(&cfg.EtcdPrefix, "etcd-prefix", "/trellis", "key prefix in etcd")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", control.DefaultTrustDomain, "SPIFFE trust domain of the mesh")
	fs.StringVar(&cfg.CACertFile, "ca-cert", "", "import this CA certificate (PEM; signing cert first, then its chain)")
	fs.StringVar(&cfg.CAKeyFile, "ca-key", "", "private key of --ca-cert (PEM, mode 0600)")
	fs.StringVar(&cfg.StoreSecretFile, "store-secret-file", "", "file (mode 0600) holding the store secret, which seals the CA key kept in the store; every server on one store needs the same (or env "+control.StoreSecretEnv+"; default: the data dir's "+control.StoreSecretFileName+", made on a store without a CA)")
	fs.StringVar(&cfg.AdminTokenFile, "admin-token-file", "", "accept the admin token in this file instead of generating one")
	fs.DurationVar(&cfg.SVIDTTL, "svid-ttl", 24*time.Hour, "lifetime of workload certificates")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", control.DefaultLeaseTTL, "how long a stopped server's own records (its peer record, a job's lock) outlive it")
	fs.DurationVar(&cfg.MaxStreamAge, "max-stream-age", control.DefaultMaxStreamAge, "a proxy's stream ends after this long (give or take 10%) and the proxy reconnects to a random server of its list: how proxies spread onto a server that joined (at least 1s)")
	fs.DurationVar(&cfg.RegistrationGrace, "registration-grace", control.DefaultRegistrationGrace, "how long an instance outlives the server that held its proxy's stream, for the proxy to reconnect to another (a proxy that disconnects is deregistered at once)")
	fs.IntVar(&cfg.MaxRegistering, "max-registering", control.DefaultMaxRegistering, "proxy streams that register in the store at once; the others wait their turn, holding their streams (a store that takes more writes may take more)")
	fs.DurationVar(&cfg.WarmUp, "warm-up", control.DefaultWarmUp, "how long after its start the server keeps the instances last registered that have not re-registered yet in snapshots (at most 10m)")
	fs.DurationVar(&cfg.StatsInterval, "stats-interval", 0, "width of the intervals the server sums traffic summaries into (default 5s, 1s to 1m; proxies should send at the same interval)")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", control.DefaultWriteTimeout, "deadline of each API write: answered applied, not applied, or of unknown outcome (retry with its key) within it")
	fs.StringVar(&cfg.DNSListen, "dns-listen", "", "serve the mesh's names over DNS on this address, UDP and TCP, for callers outside the mesh (healthy edge listeners, or the gateway serving a name; REFUSED outside the mesh's domains; off when empty)")
	fs.Float64Var(&cfg.DNSRate, "dns-rate", 0, "DNS queries a second each client may ask (default 200; negative: no limit)")
	advertise := fs.String("advertise", "", "comma-separated extra DNS names or IPs for the server certificate")
	fs.StringVar(&cfg.AdvertiseAddress, "advertise-address", "", "host:port the other servers on the same etcd reach this one's API at, to share traffic summaries (default the listen address; with a wildcard listen address, the first --advertise name or the host name, with the listen port)")
	mkLog := logFlags(fs, e, "info")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	log, err := mkLog()
	if err != nil {
		return err
	}
	cfg.Logger = log
	if *passwordFile != "" {
		certs.WarnIfShared(log, "etcd password file", *passwordFile)
	}
	cfg.EtcdEndpoints = splitList(*endpoints)
	if cfg.EtcdPassword, err = etcdPassword(e, *passwordFile); err != nil {
		return err
	}
	cfg.StoreSecret = e.getenv(control.StoreSecretEnv)
	if cfg.StoreSecret != "" && cfg.StoreSecretFile != "" {
		return usageErr("store secret: both --store-secret-file and %s are set; give one", control.StoreSecretEnv)
	}
	cfg.AdvertiseNames = splitList(*advertise)
	cfg.Out = e.stdout
	if err := cfg.Validate(); err != nil {
		return usageErr("%s", oneLine(err))
	}
	srv, err := control.New(cfg)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}
