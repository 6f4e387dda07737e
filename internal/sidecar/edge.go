package sidecar

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/edge"
)

// edgeListener builds the edge listener of Config.Edge. Certificates are
// made or loaded here, at start, so that a bad file or name stops the
// proxy with a clear error instead of failing every handshake later; a
// mesh-issued one is renewed until ctx ends.
func (p *Proxy) edgeListener(ctx context.Context) (*edge.Listener, error) {
	e := p.cfg.Edge
	l := &edge.Listener{
		Target:       p.cfg.AppAddr,
		AcceptProxy:  e.AcceptProxyProtocol,
		SendProxy:    e.SendProxyProtocol,
		Logger:       p.log.With("listener", "edge"),
		Metrics:      p.l4m,
		HandshakeLog: p.handshakes,
	}
	if e.Mode == EdgePassthrough {
		return l, nil
	}
	get, err := p.edgeCert(ctx, e.certSource(), e.CertFile, e.KeyFile, e.DNSNames)
	if err != nil {
		return nil, fmt.Errorf("edge certificate: %w", err)
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
