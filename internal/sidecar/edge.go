package sidecar

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/edge"
)

// edgeListener builds the edge listener of Config.Edge. Certificates are
// made or loaded here, at start, so that a bad file or name stops the
// proxy with a clear error instead of failing every handshake later.
func (p *Proxy) edgeListener() (*edge.Listener, error) {
	e := p.cfg.Edge
	l := &edge.Listener{
		Target:      p.cfg.AppAddr,
		AcceptProxy: e.AcceptProxyProtocol,
		SendProxy:   e.SendProxyProtocol,
		Logger:      p.log.With("listener", "edge"),
		Metrics:     p.l4m,
	}
	if e.Mode == EdgePassthrough {
		return l, nil
	}
	var get func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	switch e.certSource() {
	case EdgeCertFiles:
		fc := &certs.FileCert{CertFile: e.CertFile, KeyFile: e.KeyFile, Logger: p.log}
		if err := fc.Load(); err != nil {
			return nil, fmt.Errorf("edge certificate: %w", err)
		}
		get = fc.GetCertificate
	case EdgeCertSelfSigned:
		c, err := certs.SelfSigned(e.DNSNames, time.Now())
		if err != nil {
			return nil, fmt.Errorf("edge certificate: %w", err)
		}
		p.log.Info("edge certificate is self-signed", "names", e.DNSNames, "expires", c.Leaf.NotAfter)
		get = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c, nil }
	}
	var clientCAs *x509.CertPool
	if e.ClientCAFile != "" {
		pemBytes, err := os.ReadFile(e.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("edge client CA: %w", err)
		}
		clientCAs = x509.NewCertPool()
		if !clientCAs.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("edge client CA %s: no PEM certificate in it", e.ClientCAFile)
		}
	}
	l.TLS = certs.EdgeServerConfig(get, clientCAs)
	return l, nil
}
