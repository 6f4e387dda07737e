package control

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/trellis-mesh/trellis/internal/xds"
)

// The API port serves two kinds of client on one address. Proxies offer
// the ALPN protocol xds.ALPN and get gRPC's own HTTP/2 transport: at
// thousands of long-lived streams it costs a third of what gRPC served
// through net/http does (bench/NOTES.md, control-plane scale 3). Everything
// else (the CLI, browsers, peers, older proxies that offer only "h2") goes
// to the HTTP server, which still serves gRPC too.

// handshakeTimeout bounds a client's TLS handshake, as net/http's
// ReadHeaderTimeout bounds its request head.
const handshakeTimeout = 10 * time.Second

// splitListener accepts on l, completes each TLS handshake on a goroutine
// of its own, and hands the connection to grpc or http by the protocol the
// client chose.
type splitListener struct {
	l       net.Listener
	cfg     *tls.Config
	log     *slog.Logger
	grpc    *connQueue
	http    *connQueue
	shaking sync.WaitGroup
	// ctx ends the handshakes under way when the listener closes.
	ctx    context.Context
	cancel context.CancelFunc
}

func newSplitListener(l net.Listener, cfg *tls.Config, log *slog.Logger) *splitListener {
	s := &splitListener{
		l: l, cfg: cfg, log: log,
		grpc: newConnQueue(l.Addr()),
		http: newConnQueue(l.Addr()),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// run accepts until l fails or close is called; it then fails both queues
// and waits for the handshakes under way.
func (s *splitListener) run() error {
	defer s.shaking.Wait()
	for {
		c, err := s.l.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				err = net.ErrClosed
			}
			s.grpc.fail(err)
			s.http.fail(err)
			return err
		}
		s.shaking.Go(func() { s.handshake(c) })
	}
}

func (s *splitListener) handshake(c net.Conn) {
	ctx, cancel := context.WithTimeout(s.ctx, handshakeTimeout)
	defer cancel()
	tc := tls.Server(c, s.cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		s.log.Debug("api TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		c.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == xds.ALPN {
		s.grpc.give(tc)
	} else {
		s.http.give(tc)
	}
}

// close stops accepting: l closes, and connections still handshaking are
// dropped.
func (s *splitListener) close() {
	s.cancel()
	s.l.Close()
}

// connQueue is a net.Listener whose connections come from a splitListener.
type connQueue struct {
	addr  net.Addr
	conns chan net.Conn
	mu    sync.Mutex
	err   error
	done  chan struct{}
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// give hands c to the next Accept, or closes it once the queue is closed.
func (q *connQueue) give(c net.Conn) {
	select {
	case q.conns <- c:
	case <-q.done:
		c.Close()
	}
}

// fail closes the queue with err, which Accept returns from now on.
func (q *connQueue) fail(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err == nil {
		q.err = err
		close(q.done)
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.conns:
		return c, nil
	case <-q.done:
		q.mu.Lock()
		defer q.mu.Unlock()
		return nil, q.err
	}
}

func (q *connQueue) Close() error {
	q.fail(net.ErrClosed)
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }

// handshaken is gRPC's transport credentials for connections whose TLS
// handshake is done (splitListener's): the RPC sees the same peer
// information as one served over net/http.
type handshaken struct{}

func (handshaken) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, nil, errors.New("not a TLS connection")
	}
	return c, credentials.TLSInfo{
		State:          tc.ConnectionState(),
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}, nil
}

func (handshaken) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("server-side credentials only")
}

func (handshaken) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.2"}
}

func (h handshaken) Clone() credentials.TransportCredentials { return h }

func (handshaken) OverrideServerName(string) error { return nil }
