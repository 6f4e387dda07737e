package l7

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/proxy/h1"
	"github.com/trellis-mesh/trellis/internal/tracing"
)

// Upgraded connections (WebSocket) cannot ride an HTTP/2 request between
// the sidecars: the outbound sends the HTTP/1.1 request head and then the
// connection's bytes on a tunnel stream of their own, and the inbound
// checks that head as it checks any request before the app sees it.

// roundTripUpgrade sends an upgrade request to ep over a stream of its own.
// On 101 the response body is the connection, as httputil.ReverseProxy
// expects.
func (o *Outbound) roundTripUpgrade(req *http.Request, rule *Rule, ep balance.Endpoint, start time.Time, sp *tracing.Span) (*http.Response, error) {
	if req.ContentLength != 0 {
		return nil, errUpgradeBody
	}
	if o.DialUpgrade == nil {
		return nil, &proxyError{http.StatusNotImplemented, "trellis: upgrades are not supported here"}
	}
	ctx, cancel := context.WithTimeout(req.Context(), rule.Timeout)
	defer cancel()
	conn, err := o.DialUpgrade(ctx, ep)
	if err != nil {
		o.bal.Failed(ep.Key())
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
	sp.End(rule.Name, ep.Version, resp.StatusCode, 1) // at the head: the connection may last for hours
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &upgraded{Reader: br, Conn: conn}
	} else {
		resp.Body = &closeBoth{ReadCloser: resp.Body, c: conn}
	}
	return resp, nil
}

// errUpgradeBody refuses an upgrade request with a body: after its head
// come the bytes of the protocol switched to, so where a body would end
// is for the two ends to read differently.
var errUpgradeBody = &proxyError{http.StatusBadRequest, "trellis: an upgrade request cannot have a body"}

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
	// The head is read as strictly as a client's (see package h1): the
	// caller is another sidecar, but what it relays came from its client.
	req, err := h1.ReadRequest(br, meshTrailer)
	if err != nil {
		var pe *h1.ProtocolError
		if errors.As(err, &pe) {
			reply(c, pe.Status, "trellis: "+pe.Msg)
			in.Metrics.observe("inbound", peer.Service(), in.Self().Service(), "", "", pe.Status, start)
		}
		return
	}
	c.SetReadDeadline(time.Time{})
	code := in.upgrade(c, br, req, peer)
	in.Metrics.observe("inbound", peer.Service(), in.Self().Service(), "", "", code, start)
}

func (in *Inbound) upgrade(c net.Conn, br *bufio.Reader, req *http.Request, peer identity.ID) int {
	reply := func(code int, msg string) int { return reply(c, code, msg) }
	switch {
	case upgradeType(req.Header) == "":
		return reply(http.StatusBadRequest, "trellis: not an upgrade request")
	case req.ContentLength != 0:
		return reply(http.StatusBadRequest, errUpgradeBody.msg)
	}
	if bad := in.admit(req, peer); bad != nil {
		in.Metrics.refused(in.Logger, req, "inbound", peer.Service(), in.Self().Service(), bad)
		return reply(bad.status, bad.msg)
	}
	return in.switchProtocols(c, br, req)
}

// reply answers on c, closing the stream, and returns code.
func reply(c net.Conn, code int, msg string) int {
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n",
		code, http.StatusText(code), len(msg)+1, msg)
	return code
}

// switchProtocols sends an admitted upgrade request read from c (through
// br) to the app and, once the app has switched to the protocol asked
// for, joins the two connections. It returns the status answered.
func (in *Inbound) switchProtocols(c net.Conn, br *bufio.Reader, req *http.Request) int {
	reply := func(code int, msg string) int { return reply(c, code, msg) }
	up, err := prepareRequest(req) // hop-by-hop fields out, the upgrade kept
	if err != nil {
		return reply(http.StatusBadRequest, "trellis: "+err.Error())
	}
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = []string{""} // not Go's default
	}
	// The caller's context: a request whose caller left, or whose server
	// stops, stops dialing too.
	d := net.Dialer{Timeout: 5 * time.Second}
	app, err := d.DialContext(req.Context(), "tcp", in.Target)
	if err != nil {
		return reply(http.StatusBadGateway, "trellis: app unreachable")
	}
	defer app.Close()
	req.RequestURI = ""
	// The head, and a body as its framing says; what the caller sent after
	// it stays unread in br until the app has switched protocols.
	if err := req.Write(app); err != nil {
		return reply(http.StatusBadGateway, "trellis: app unreachable")
	}
	ar := bufio.NewReader(app)
	app.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := readFinalResponse(ar, req)
	if err != nil {
		return reply(http.StatusBadGateway, "trellis: the app did not answer the upgrade")
	}
	app.SetReadDeadline(time.Time{})
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// The app did not upgrade: its answer is relayed and the stream
		// ends. Anything the caller sent after the head would be a second
		// request that no check saw; it never reaches the app.
		removeHopByHop(resp.Header)
		resp.Close = true
		resp.Write(c)
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := upgradeType(resp.Header); !strings.EqualFold(got, up) {
		in.Logger.Info("app switched to another protocol than asked", "asked", cut(up, 64), "got", cut(got, 64))
		return reply(http.StatusBadGateway, "trellis: the app switched to another protocol than the one asked for")
	}
	removeHopByHop(resp.Header)
	resp.Header["Connection"] = []string{"Upgrade"}
	resp.Header["Upgrade"] = []string{up}
	bw := bufio.NewWriter(c)
	bw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	resp.Header.Write(bw)
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		return http.StatusSwitchingProtocols
	}
	// Switched: bytes flow both ways as they come, the ones each reader
	// already buffered first.
	done := make(chan struct{})
	go func() {
		io.Copy(app, br)
		if cw, ok := app.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		close(done)
	}()
	io.Copy(c, ar)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
	return http.StatusSwitchingProtocols
}

// readFinalResponse reads the app's answer to an upgrade request: 101, or
// a final status; other informational responses (100, 103) are skipped.
func readFinalResponse(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	for i := 0; i < 8; i++ {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, nil
		}
		resp.Body.Close()
	}
	return nil, errors.New("too many informational responses")
}
