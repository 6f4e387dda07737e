package control

import (
	"errors"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/store"
)

// validateEtcd checks the external etcd options: TLS files and a login only
// make sense with endpoints, and come in pairs.
func (c *Config) validateEtcd() []error {
	var errs []error
	external := len(c.EtcdEndpoints) > 0
	if !external && (c.EtcdCAFile != "" || c.EtcdCertFile != "" || c.EtcdKeyFile != "" || c.EtcdUsername != "" || c.EtcdPassword != "") {
		errs = append(errs, errors.New("etcd TLS and login options: only with etcd endpoints (the embedded etcd makes its own credentials)"))
	}
	if (c.EtcdCertFile == "") != (c.EtcdKeyFile == "") {
		errs = append(errs, errors.New("etcd cert and etcd key: give both or neither"))
	}
	if c.EtcdUsername == "" && c.EtcdPassword != "" {
		errs = append(errs, errors.New("etcd password: given without an etcd username"))
	}
	if c.EtcdUsername != "" && c.EtcdPassword == "" {
		errs = append(errs, errors.New("etcd username: given without a password"))
	}
	return errs
}

// etcdConfig is how to reach the external etcd; without endpoints, the
// embedded one is meant and the result is empty.
func (s *Server) etcdConfig() (store.EtcdConfig, error) {
	c := &s.cfg
	if len(c.EtcdEndpoints) == 0 {
		return store.EtcdConfig{}, nil
	}
	cfg := store.EtcdConfig{Endpoints: c.EtcdEndpoints, Username: c.EtcdUsername, Password: c.EtcdPassword}
	if c.EtcdUsername != "" && !strings.HasPrefix(c.EtcdEndpoints[0], "https://") {
		s.log.Warn("etcd password sent over plaintext http://; use https:// endpoints", "user", c.EtcdUsername)
	}
	if c.EtcdKeyFile != "" {
		certs.WarnIfShared(s.log, "etcd client key", c.EtcdKeyFile)
	}
	if c.EtcdCAFile != "" || c.EtcdCertFile != "" {
		tlsCfg, err := store.ClientTLS(c.EtcdCAFile, c.EtcdCertFile, c.EtcdKeyFile)
		if err != nil {
			return store.EtcdConfig{}, fmt.Errorf("external etcd: %w", err)
		}
		cfg.TLS = tlsCfg
	}
	return cfg, nil
}

// storeRefused returns the embedded etcd's hook for connections it refused
// (a local process without the server's credentials): each is counted and
// logged with its reason.
func (s *Server) storeRefused() func(store.Refusal) {
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "trellis_store_connections_refused_total",
		Help: "Connections the embedded etcd refused at its TLS handshake, by listener (client or peer).",
	}, []string{"listener"})
	if err := s.cfg.Registry.Register(refused); err != nil {
		if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			refused = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	return func(r store.Refusal) {
		refused.WithLabelValues(r.Listener).Inc()
		s.log.Warn("store connection refused", "listener", r.Listener, "remote", r.Remote, "reason", r.Reason)
	}
}
