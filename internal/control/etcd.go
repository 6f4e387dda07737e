package control

import (
	"errors"
	"fmt"

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
	if c.EtcdCAFile != "" || c.EtcdCertFile != "" {
		tlsCfg, err := store.ClientTLS(c.EtcdCAFile, c.EtcdCertFile, c.EtcdKeyFile)
		if err != nil {
			return store.EtcdConfig{}, fmt.Errorf("external etcd: %w", err)
		}
		cfg.TLS = tlsCfg
	}
	return cfg, nil
}
