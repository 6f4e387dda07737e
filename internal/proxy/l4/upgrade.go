package l4

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"

	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
)

// UpgradeHeader marks a CONNECT stream that carries one HTTP/1.1 request
// with an Upgrade (a WebSocket), head and all: the inbound checks the
// request as it checks any HTTP request before the stream reaches the app.
const UpgradeHeader = "trellis-upgrade"

// DialUpgrade opens a stream to ep for an upgraded HTTP connection and
// returns its local end, a socket.
func (p *Pool) DialUpgrade(ctx context.Context, ep Endpoint, service string, cfg *tls.Config) (net.Conn, error) {
	addr := ep.Addr
	s, err := p.Open(ctx, ep, service, cfg, hpack.HeaderField{Name: UpgradeHeader, Value: "1"})
	if err != nil {
		return nil, err
	}
	mine, theirs, err := socketPair()
	if err != nil {
		s.Close()
		return nil, err
	}
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	if p.dialsClosed {
		s.Close()
		mine.Close()
		theirs.Close()
		return nil, fmt.Errorf("endpoint %s: %w", addr, errPoolClosed)
	}
	p.bg.Go(func() { s.Splice(theirs) })
	return mine, nil
}

// serveUpgrade hands an upgrade stream to ServeUpgrade through a socket
// pair; the stream's other side is spliced as any other.
func (in *Inbound) serveUpgrade(peer identity.ID, s *tunnel.Stream) {
	mine, theirs, err := socketPair()
	if err != nil {
		s.Refuse(502, "no socket for the upgrade")
		return
	}
	if err := s.Accept(); err != nil {
		mine.Close()
		theirs.Close()
		return
	}
	var served sync.WaitGroup
	served.Go(func() { in.ServeUpgrade(mine, peer) })
	s.Splice(theirs)
	// The stream is over: so is the upgraded connection. Closing our end
	// ends ServeUpgrade, which this stream's goroutine waits for.
	mine.Close()
	served.Wait()
}
