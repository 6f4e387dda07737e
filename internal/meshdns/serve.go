package meshdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/netutil"
)

// maxTCPConns bounds the TCP connections served at once.
const maxTCPConns = 256

// Listeners are one address's UDP socket and TCP listener, on the same
// port.
type Listeners struct {
	UDP net.PacketConn
	TCP net.Listener
}

// Listen binds addr (host:port) for UDP and TCP. Port 0 picks one free
// for both.
func Listen(addr string) (*Listeners, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dns listen %q: %w", addr, err)
	}
	for range 10 {
		tl, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("dns listen tcp: %w", err)
		}
		p := strconv.Itoa(tl.Addr().(*net.TCPAddr).Port)
		ul, err := net.ListenPacket("udp", net.JoinHostPort(host, p))
		if err == nil {
			return &Listeners{UDP: ul, TCP: tl}, nil
		}
		tl.Close()
		if port != "0" {
			return nil, fmt.Errorf("dns listen udp: %w", err)
		}
	}
	return nil, fmt.Errorf("dns listen %q: no port free for both UDP and TCP", addr)
}

// Addr is the address both listen on.
func (l *Listeners) Addr() string { return l.TCP.Addr().String() }

// Close closes both.
func (l *Listeners) Close() {
	l.UDP.Close()
	l.TCP.Close()
}

// Serve answers queries on ls with h until ctx ends, then stops both
// servers and waits for the queries in progress; it closes ls.
func Serve(ctx context.Context, ls *Listeners, h dns.Handler) error {
	accept := func(dh dns.Header) dns.MsgAcceptAction {
		if dh.Bits&(1<<15) != 0 { // QR: an answer, never answered
			return dns.MsgIgnore
		}
		return dns.MsgAccept // the handler checks the rest, and counts it
	}
	var invalid dns.MsgInvalidFunc
	if g, ok := h.(interface{ invalid() }); ok {
		invalid = func([]byte, error) { g.invalid() }
	}
	servers := []*dns.Server{
		{PacketConn: ls.UDP, Handler: h, UDPSize: dns.MaxMsgSize, MsgAcceptFunc: accept, MsgInvalidFunc: invalid},
		{Listener: netutil.LimitListener(ls.TCP, maxTCPConns), Handler: h, MsgAcceptFunc: accept, MsgInvalidFunc: invalid,
			ReadTimeout: 2 * time.Second, IdleTimeout: func() time.Duration { return 8 * time.Second }, MaxTCPQueries: 1000},
	}
	errc := make(chan error, len(servers))
	started := make(chan struct{}, len(servers))
	for _, s := range servers {
		s.NotifyStartedFunc = func() { started <- struct{}{} }
		go func() { errc <- s.ActivateAndServe() }()
	}
	var err error
	running := len(servers)
	for n := 0; n < len(servers); n++ {
		select {
		case <-started:
		case err = <-errc:
			running--
		}
	}
	if err == nil {
		select {
		case <-ctx.Done():
		case err = <-errc:
			running--
		}
	}
	for _, s := range servers {
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		s.ShutdownContext(sctx) // an error: it never started, or had stopped
		cancel()
	}
	for ; running > 0; running-- {
		if e := <-errc; err == nil {
			err = e
		}
	}
	ls.Close()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("dns serve: %w", err)
	}
	return nil
}
