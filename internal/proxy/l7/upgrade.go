package l7

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
)

// Upgraded connections (WebSocket) cannot ride an HTTP/2 request between
// the sidecars: the outbound sends the HTTP/1.1 request head and then the
// connection's bytes on a tunnel stream of their own, and the inbound
// checks that head as it checks any request before the app sees it.

// roundTripUpgrade sends an upgrade request to ep over a stream of its own.
// On 101 the response body is the connection, as httputil.ReverseProxy
// expects.
func (o *Outbound) roundTripUpgrade(req *http.Request, rule *Rule, ep balance.Endpoint, start time.Time) (*http.Response, error) {
	if o.DialUpgrade == nil {
		return nil, &proxyError{http.StatusNotImplemented, "trellis: upgrades are not supported here"}
	}
	ctx, cancel := context.WithTimeout(req.Context(), rule.Timeout)
	defer cancel()
	conn, err := o.DialUpgrade(ctx, ep)
	if err != nil {
		o.bal.Failed(ep.Addr)
		return nil, fmt.Errorf("upgrade stream to %s: %w", ep.Instance, err)
	}
	conn.SetDeadline(time.Now().Add(rule.Timeout))
	out := req.Clone(ctx)
	out.URL.Scheme, out.URL.Host = "http", ep.Addr
	if err := out.Write(conn); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, out)
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, &proxyError{http.StatusGatewayTimeout, fmt.Sprintf("trellis: upstream %s did not answer the upgrade within %s", o.Service, rule.Timeout)}
		}
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	o.Metrics.observe("outbound", o.Source, o.Service, rule.Name, ep.Version, resp.StatusCode, start)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &upgraded{Reader: br, Conn: conn}
	} else {
		resp.Body = &closeBoth{ReadCloser: resp.Body, c: conn}
	}
	return resp, nil
}

// upgraded is the connection after a 101, reading first what the response
// reader already buffered.
type upgraded struct {
	*bufio.Reader
	net.Conn
}

func (u *upgraded) Read(p []byte) (int, error) { return u.Reader.Read(p) }

type closeBoth struct {
	io.ReadCloser
	c net.Conn
}

func (b *closeBoth) Close() error {
	b.ReadCloser.Close()
	return b.c.Close()
}

// ServeUpgrade serves one upgrade stream from peer: it reads the request
// head from c, refuses it as ServeHTTP would, or sends it to the app and
// joins the two connections.
func (in *Inbound) ServeUpgrade(c net.Conn, peer identity.ID) {
	in.init()
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReaderSize(c, 16<<10)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	code := in.upgrade(c, br, req, peer)
	in.Metrics.observe("inbound", peer.Service(), in.Self().Service(), "", "", code, start)
}

func (in *Inbound) upgrade(c net.Conn, br *bufio.Reader, req *http.Request, peer identity.ID) int {
	reply := func(code int, msg string) int {
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n",
			code, http.StatusText(code), len(msg)+1, msg)
		return code
	}
	if upgradeType(req.Header) == "" {
		return reply(http.StatusBadRequest, "trellis: not an upgrade request")
	}
	if bad := in.admit(req, peer); bad != nil {
		return reply(bad.status, bad.msg)
	}
	app, err := net.DialTimeout("tcp", in.Target, 5*time.Second)
	if err != nil {
		return reply(http.StatusBadGateway, "trellis: app unreachable")
	}
	defer app.Close()
	req.RequestURI = ""
	if err := req.Write(app); err != nil {
		return reply(http.StatusBadGateway, "trellis: app unreachable")
	}
	// From here on bytes flow both ways as they come: the app's response
	// head first, then the upgraded protocol.
	done := make(chan struct{})
	go func() {
		io.Copy(app, br) // what the caller sent after the head, then the rest
		if cw, ok := app.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		close(done)
	}()
	io.Copy(c, app)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
	return http.StatusSwitchingProtocols
}
