package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/certs"
)

// certFunc serves a TLS listener's certificate.
type certFunc = func(*tls.ClientHelloInfo) (*tls.Certificate, error)

// edgeCert makes the certificate function of a listener for clients outside
// the mesh (a sidecar's edge listener, a gateway's https listener) from its
// source, one of v1.CertFiles, v1.CertMesh, v1.CertSelfSigned. Files are
// loaded and self-signed certificates made here, so that a bad file or
// name is an error at once. A mesh certificate is issued in the background
// and renewed at half its life until ctx ends; until it first arrives,
// handshakes fail.
func (p *Proxy) edgeCert(ctx context.Context, source, certFile, keyFile string, names []string) (certFunc, error) {
	switch source {
	case v1.CertFiles:
		fc := &certs.FileCert{CertFile: certFile, KeyFile: keyFile, Logger: p.log}
		if err := fc.Load(); err != nil {
			return nil, err
		}
		return fc.GetCertificate, nil
	case v1.CertSelfSigned:
		c, err := certs.SelfSigned(names, time.Now())
		if err != nil {
			return nil, err
		}
		p.log.Info("edge certificate is self-signed", "names", names, "expires", c.Leaf.NotAfter.Format(time.RFC3339))
		return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c, nil }, nil
	case v1.CertMesh:
		var cur atomic.Pointer[tls.Certificate]
		p.certWork.Go(func() { p.keepMeshEdgeCert(ctx, slices.Clone(names), &cur) })
		return func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := cur.Load(); c != nil {
				return c, nil
			}
			return nil, fmt.Errorf("edge certificate for %v not issued by the mesh CA yet", names)
		}, nil
	}
	return nil, fmt.Errorf("certificate source %q: want %s, %s or %s", source, v1.CertFiles, v1.CertMesh, v1.CertSelfSigned)
}

// keepMeshEdgeCert keeps cur holding a mesh-issued certificate for names.
// A refusal (names the Service does not allow) is retried with backoff:
// an admin may add the names while the proxy runs.
func (p *Proxy) keepMeshEdgeCert(ctx context.Context, names []string, cur *atomic.Pointer[tls.Certificate]) {
	var delay time.Duration
	for ctx.Err() == nil {
		c, err := p.issueEdgeCert(ctx, names)
		wait := delay
		switch {
		case err != nil && ctx.Err() == nil:
			delay = backoff(delay)
			if c := cur.Load(); c != nil {
				delay = min(delay, max(time.Until(c.Leaf.NotAfter)/4, time.Second))
			}
			wait = delay
			p.log.Warn("edge certificate not issued; will retry", "names", names, "err", err, "retryIn", wait.Round(time.Millisecond))
		case err == nil:
			delay = 0
			cur.Store(c)
			life := c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)
			wait = time.Until(c.Leaf.NotBefore.Add(life / 2))
			p.log.Info("edge certificate issued by the mesh CA", "names", names, "expires", c.Leaf.NotAfter.Format(time.RFC3339))
		}
		sleepCtx(ctx, wait)
	}
}

// issueEdgeCert makes a key, which stays in this process (it is never
// persisted), and has the mesh CA sign it for names.
func (p *Proxy) issueEdgeCert(ctx context.Context, names []string) (*tls.Certificate, error) {
	c, _, err := p.issue(ctx, func(ctx context.Context, csrPEM []byte) (v1.Signed, error) {
		return p.api.SignEdge(ctx, p.cfg.Service, csrPEM, names)
	})
	if err != nil {
		return nil, err
	}
	if !slices.Equal(c.Leaf.DNSNames, names) || len(c.Leaf.URIs) > 0 {
		return nil, errors.New("the CA returned a certificate for other names")
	}
	return c, nil
}
