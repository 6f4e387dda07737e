package control

import (
	"context"

	"github.com/trellis-mesh/trellis/internal/meshdns"
)

// serveDNS starts the mesh's authoritative DNS on Config.DNSListen, its
// names rebuilt from the store's mirror at every change (an instance
// that turns unhealthy or leaves is out of the next answer), until ctx
// ends.
func (s *Server) serveDNS(ctx context.Context) error {
	ls, err := meshdns.Listen(s.cfg.DNSListen)
	if err != nil {
		return err
	}
	auth := meshdns.NewAuthority(meshdns.AuthorityConfig{Rate: s.cfg.DNSRate, Logger: s.log, Metrics: meshdns.NewMetrics(s.cfg.Registry)})
	auth.Update(s.state.mesh())
	s.goBackground(func() {
		for {
			changed := s.state.Changed()
			auth.Update(s.state.mesh())
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
		}
	})
	s.goBackground(func() {
		if err := meshdns.Serve(ctx, ls, auth); err != nil {
			s.log.Error("DNS server stopped", "err", err)
		}
	})
	s.log.Info("DNS serving the mesh's names", "addr", ls.Addr())
	return nil
}
