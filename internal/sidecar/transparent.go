package sidecar

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/netconn"

	"github.com/trellis-mesh/trellis/internal/redirect"
)

// Transparent serves the traffic that redirect rules (`trellis redirect`,
// or ECS's APPMESH proxyConfiguration) send to the proxy, so that the app
// calls its backends at their own names and addresses.
type Transparent struct {
	// IngressListen takes connections from other hosts to the app's ports,
	// such as 0.0.0.0:15006. It accepts what the public listener accepts
	// (mesh mTLS, or plain callers of a permissive mesh), so nothing
	// reaches the app around the mesh. It may be the public listener's
	// address.
	IngressListen string `yaml:"ingressListen"`
	// EgressListen takes the app's outbound connections, such as
	// 127.0.0.1:15001. Each goes to the upstream whose instances have its
	// destination address or, for HTTP/1, whose name its Host header
	// gives; any other is refused, so only Upstreams can be called.
	EgressListen string `yaml:"egressListen"`
}

func (t *Transparent) validate() error {
	var errs []error
	if err := validHostPort(t.IngressListen, false); err != nil {
		errs = append(errs, fmt.Errorf("transparent ingress listen: %w", err))
	}
	if err := validHostPort(t.EgressListen, false); err != nil {
		errs = append(errs, fmt.Errorf("transparent egress listen: %w", err))
	}
	return errors.Join(errs...)
}

// listenTransparent listens for redirected connections: IPv4 addresses on
// IPv4 sockets, because conntrack answers SO_ORIGINAL_DST for the socket's
// own family.
func listenTransparent(addr string) (net.Listener, error) {
	network := "tcp"
	if host, _, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.To4() != nil {
			network = "tcp4"
		}
	}
	return net.Listen(network, addr)
}

// sniffTimeout bounds waiting for the first bytes of a connection whose
// destination is no mesh instance: a client of a server-speaks-first
// protocol sends nothing, and is refused after it.
const sniffTimeout = 2 * time.Second

// maxSniff bounds the request head read to find a Host header.
const maxSniff = 16 << 10

// serveEgress dispatches each redirected outbound connection to the
// upstream it is for, or refuses it.
func (p *Proxy) serveEgress(l net.Listener, dp *dataPlane) error {
	self := netip.MustParseAddrPort(l.Addr().String())
	// A dispatch sniffs for at most sniffTimeout, then hands the
	// connection on to its upstream, which owns it from then on (its
	// drain ends it): serveEgress waits for the dispatches in progress.
	// One starting after the listener closed refuses its connection, so
	// that none is added while serveEgress waits.
	var (
		mu       sync.Mutex
		closed   bool
		dispatch sync.WaitGroup
	)
	defer func() {
		mu.Lock()
		closed = true
		mu.Unlock()
		dispatch.Wait()
	}()
	return p.acceptor("egress").Serve(l, func(c net.Conn) {
		mu.Lock()
		if closed {
			mu.Unlock()
			c.Close()
			return
		}
		dispatch.Add(1)
		mu.Unlock()
		c, u := p.dispatchEgress(c, self, dp)
		dispatch.Done()
		if u != nil {
			p.serveUpstreamConn(c, u)
		}
	})
}

// dispatchEgress finds the upstream c is for and returns it with the
// connection to serve (which replays what sniffing read), or refuses c
// and returns a nil upstream.
func (p *Proxy) dispatchEgress(c net.Conn, self netip.AddrPort, dp *dataPlane) (net.Conn, *upstream) {
	dst, err := redirect.OriginalDst(c)
	if err != nil {
		p.refuseEgress(c, "error", "no original destination", "err", err)
		return nil, nil
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if dst == self {
		// Dialed directly rather than redirected: there is nowhere to
		// forward it (and forwarding to ourselves would loop).
		p.refuseEgress(c, "refused", "connection was not redirected", "dst", dst.String())
		return nil, nil
	}
	if svc := p.serviceAt(dst.Addr()); svc != "" {
		if u := dp.upstream(svc); u != nil {
			p.m.egress.WithLabelValues("address").Inc()
			return c, u
		}
	}
	pc, host := sniffHost(c)
	if host == "" {
		p.refuseEgress(pc, "refused", "destination is no instance of an upstream", "dst", dst.String())
		return nil, nil
	}
	if u := dp.upstream(serviceOfHost(host, dp)); u != nil {
		p.m.egress.WithLabelValues("host").Inc()
		return pc, u
	}
	// An HTTP client is told why, so the app's logs say what to fix.
	names := make([]string, len(dp.upstreams))
	for i, u := range dp.upstreams {
		names[i] = u.service
	}
	msg := fmt.Sprintf("trellis: %s is not a backend of %s (backends: %s)\n", host, p.cfg.Service, strings.Join(names, ", "))
	fmt.Fprintf(pc, "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(msg), msg)
	p.refuseEgress(pc, "refused", "host is not a backend", "host", host, "dst", dst.String())
	return nil, nil
}

func (p *Proxy) refuseEgress(c net.Conn, result, why string, args ...any) {
	c.Close()
	p.m.egress.WithLabelValues(result).Inc()
	p.log.Info("outbound connection refused: "+why, append(args, "src", c.RemoteAddr().String())...)
}

// serviceAt is the upstream whose virtual IP addr is, or the one with an
// instance at addr, or "" when none or
// several have (several services on one host, or behind one gateway: the
// Host header may still tell them apart).
func (p *Proxy) serviceAt(addr netip.Addr) string {
	a := p.cur.Load()
	if a == nil {
		return ""
	}
	if svc, ok := a.byVIP[addr]; ok {
		// A virtual IP the app got from the proxy's DNS: the easiest
		// case, any TCP protocol, no Host header needed.
		return svc
	}
	return a.byAddr[addr]
}

// upstream is the data plane of service, or nil if it is no upstream.
func (dp *dataPlane) upstream(service string) *upstream {
	for _, u := range dp.upstreams {
		if u.service == service {
			return u
		}
	}
	return nil
}

// serviceOfHost is the upstream a Host header names: the service name, or
// its first DNS label (backend.mesh.local, backend.default.svc...).
func serviceOfHost(host string, dp *dataPlane) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if dp.upstream(host) != nil {
		return host
	}
	label, _, _ := strings.Cut(host, ".")
	return label
}

// sniffHost reads the head of an HTTP/1 request without consuming it and
// returns its Host, or "" for anything else, with a conn that replays what
// was read.
func sniffHost(c net.Conn) (net.Conn, string) {
	br := bufio.NewReaderSize(c, maxSniff)
	pc := netconn.Peeked(c, br)
	c.SetReadDeadline(time.Now().Add(sniffTimeout))
	defer c.SetReadDeadline(time.Time{})
	for n := 1; ; n = br.Buffered() + 1 {
		b, err := br.Peek(n)
		if err != nil {
			return pc, ""
		}
		b = b[:br.Buffered()]
		if !looksHTTP1(b) {
			return pc, ""
		}
		if end := bytes.Index(b, []byte("\r\n\r\n")); end >= 0 {
			r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b[:end+4])))
			if err != nil {
				return pc, ""
			}
			return pc, r.Host
		}
		if br.Buffered() == maxSniff {
			return pc, ""
		}
	}
}

// looksHTTP1 reports whether b may be the start of an HTTP/1 request line:
// a token of upper-case letters and a space. The HTTP/2 preface ("PRI *")
// passes, and then fails to parse as a request with a Host.
func looksHTTP1(b []byte) bool {
	for i, ch := range b {
		switch {
		case ch == ' ':
			return i > 0
		case ch < 'A' || ch > 'Z' || i > 16:
			return false
		}
	}
	return true
}

// indexAddr records that service has an instance at addr; an address of
// several services maps to "" (ambiguous).
func indexAddr(idx map[netip.Addr]string, addr, service string) {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return
	}
	a = a.Unmap()
	if prev, ok := idx[a]; ok && prev != service {
		service = ""
	}
	idx[a] = service
}
