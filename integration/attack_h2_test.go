//go:build linux

package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// Issue 18 item 6 against the real binary: HTTP/2 by RFC 9113 on every
// HTTP/2 listener (a sidecar's outbound over h2c, a gateway's ingress over
// h2c and over TLS with ALPN h2, and a sidecar's inbound over mutual TLS,
// reached through a relay that holds a client certificate). Each runs
// h2spec, the conformance suite, with every case passing, and a table of
// malformed inputs: the stream or connection error RFC 9113 asks for, the
// connection's state after it, and no byte of a refused request at the
// app.

// h2Target is an HTTP/2 listener under test.
type h2Target struct {
	name string
	// host and port reach it for h2spec; tls: with TLS (ALPN h2).
	host  string
	port  int
	tls   bool
	dial  func() (net.Conn, error) // a connection, TLS done if any
	admin string                   // the admin address of its process
	// authority is what requests name: the TLS server name over TLS.
	authority string
}

func TestH2AttackListeners(t *testing.T) {
	s := startServerKnownCA(t) // the relay forges an SVID with its CA's key
	app := h1StartApp(t)
	httpPort, httpsPort := trellistest.FreePort(t), trellistest.FreePort(t)
	frontWeb(t, s, frontHTTP(httpPort), frontHTTPS(httpsPort))
	web := s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	up, upPort := loopAddr(t)
	client := s.startProxy(t, proxyOpts{service: "client", appPort: app.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	_, gwAdminAddr := s.startFront(t)
	ins, err := s.api.Instances(context.Background(), "web")
	if err != nil || len(ins) != 1 {
		t.Fatalf("instances of web = %v, %v; want 1", ins, err)
	}
	relay := h2Relay(t, net.JoinHostPort(ins[0].Address, strconv.Itoa(ins[0].Port)),
		trellistest.Forge(t, trellistest.SVIDSpec("spiffe://trellis.local/svc/client"), svidMeshCA(t, s)).TLS())

	plain := func(addr string) func() (net.Conn, error) {
		return func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }
	}
	httpsAddr := "127.0.0.1:" + strconv.Itoa(httpsPort)
	roots := meshRoots(t, s)
	targets := []h2Target{
		{"outbound", "127.0.0.1", upPort, false, plain(up), client.admin, "web"},
		{"ingress-http", "127.0.0.1", httpPort, false, plain("127.0.0.1:" + strconv.Itoa(httpPort)), gwAdminAddr, "web"},
		{"ingress-https", "127.0.0.1", httpsPort, true, func() (net.Conn, error) {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", httpsAddr,
				&tls.Config{ServerName: "web.example.test", RootCAs: roots, NextProtos: []string{"h2"}})
			if err == nil && c.ConnectionState().NegotiatedProtocol != "h2" {
				c.Close()
				return nil, fmt.Errorf("ALPN %q, want h2", c.ConnectionState().NegotiatedProtocol)
			}
			return c, err
		}, gwAdminAddr, "web.example.test"},
		{"inbound", "127.0.0.1", relay.Addr().(*net.TCPAddr).Port, false, plain(relay.Addr().String()), web.admin, "web"},
	}
	for _, tg := range targets {
		trellistest.Eventually(t, 30*time.Second, tg.name+" serving HTTP/2", func() error {
			c, err := h2Dial(tg)
			if err != nil {
				return err
			}
			defer c.Close()
			c.headers(1, true, c.get("/ok")...)
			if got := c.await(1); got != "status 200" {
				return errors.New(got)
			}
			return nil
		})
	}

	h2spec := h2specBinary(t)
	for _, tg := range targets {
		t.Run("h2spec/"+tg.name, func(t *testing.T) {
			args := []string{"-h", tg.host, "-p", strconv.Itoa(tg.port), "-o", "5"}
			if tg.tls {
				args = append(args, "-t", "-k")
			}
			out, err := exec.Command(h2spec, args...).CombinedOutput()
			summary := regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`).FindStringSubmatch(string(out))
			if err != nil || summary == nil || summary[4] != "0" || summary[1] != summary[2] {
				t.Fatalf("h2spec: %v\n%s", err, h2specFailures(out))
			}
			t.Logf("h2spec: %s", summary[0])
		})
	}

	for _, tg := range targets {
		t.Run("frames/"+tg.name, func(t *testing.T) {
			for _, tc := range h2Cases() {
				t.Run(tc.name, func(t *testing.T) { h2Run(t, app, tg, tc) })
			}
		})
	}

	// Counted, by reason, on every listener's process.
	for _, tg := range targets {
		if n := h2ProtocolErrors(t, tg.admin, "malformed_request"); n == 0 {
			t.Errorf("%s: trellis_http2_protocol_errors_total{reason=\"malformed_request\"} is 0", tg.name)
		}
	}
}

// h2Case is one input: run writes it on stream 1 of a fresh connection
// whose SETTINGS were exchanged; want is stream 1's answer.
type h2Case struct {
	name string
	run  func(c *h2Client)
	want string // "status NNN", "reset CODE" or "goaway CODE"
	// partial: a body streams, so the head (and some of the body) may
	// reach the app, but the request never completes there.
	partial bool
}

// h2Marker is a field of every refused request, its value the case's
// own path (h2Client.refused): the app must never see it.
const h2Marker = "x-refused-marker"

// h2Cases counts the cases run, to give each its own refused path.
var h2CaseCount atomic.Int64

func h2Cases() []h2Case {
	hf := func(name, value string) hpack.HeaderField { return hpack.HeaderField{Name: name, Value: value} }
	post := func(c *h2Client, extra ...hpack.HeaderField) []hpack.HeaderField {
		return append([]hpack.HeaderField{hf(":method", "POST"), hf(":scheme", "http"), hf(":authority", c.authority), hf(":path", c.refused), hf(h2Marker, c.refused)}, extra...)
	}
	get := func(c *h2Client, extra ...hpack.HeaderField) []hpack.HeaderField {
		return append(c.get(c.refused), append([]hpack.HeaderField{hf(h2Marker, c.refused)}, extra...)...)
	}

	return []h2Case{
		{"connection-specific field", func(c *h2Client) { c.headers(1, true, get(c, hf("connection", "close"))...) }, "reset PROTOCOL_ERROR", false},
		{"keep-alive field", func(c *h2Client) { c.headers(1, true, get(c, hf("keep-alive", "5"))...) }, "reset PROTOCOL_ERROR", false},
		{"transfer-encoding", func(c *h2Client) { c.headers(1, true, get(c, hf("transfer-encoding", "chunked"))...) }, "reset PROTOCOL_ERROR", false},
		{"upgrade field", func(c *h2Client) { c.headers(1, true, get(c, hf("upgrade", "websocket"))...) }, "reset PROTOCOL_ERROR", false},
		{"te other than trailers", func(c *h2Client) { c.headers(1, true, get(c, hf("te", "trailers, deflate"))...) }, "reset PROTOCOL_ERROR", false},
		{"no :method", func(c *h2Client) {
			c.headers(1, true, hf(":scheme", "http"), hf(":authority", c.authority), hf(":path", c.refused), hf(h2Marker, c.refused))
		}, "reset PROTOCOL_ERROR", false},
		{"no :scheme", func(c *h2Client) {
			c.headers(1, true, hf(":method", "GET"), hf(":authority", c.authority), hf(":path", c.refused), hf(h2Marker, c.refused))
		}, "reset PROTOCOL_ERROR", false},
		{"empty :path", func(c *h2Client) {
			c.headers(1, true, hf(":method", "GET"), hf(":scheme", "http"), hf(":authority", c.authority), hf(":path", ""), hf(h2Marker, c.refused))
		}, "reset PROTOCOL_ERROR", false},
		{"absolute URI in :path", func(c *h2Client) {
			c.headers(1, true, hf(":method", "GET"), hf(":scheme", "http"), hf(":authority", c.authority), hf(":path", "http://admin.internal"+c.refused), hf(h2Marker, c.refused))
		}, "reset PROTOCOL_ERROR", false},
		{"uppercase field name", func(c *h2Client) { c.headers(1, true, get(c, hf("X-Upper", "1"))...) }, "reset PROTOCOL_ERROR", false},
		{"content-length over the body", func(c *h2Client) {
			c.headers(1, false, post(c, hf("content-length", "8"))...)
			c.data(1, false, []byte("abcd"))
			c.data(1, true, []byte("ef"))
		}, "reset PROTOCOL_ERROR", false},
		{"content-length under the body", func(c *h2Client) {
			c.headers(1, false, post(c, hf("content-length", "4"))...)
			c.data(1, true, []byte("abcdefgh"))
		}, "reset PROTOCOL_ERROR", false},
		{"content-length reached, then more", func(c *h2Client) {
			c.headers(1, false, post(c, hf("content-length", "4"))...)
			c.data(1, false, []byte("abcd"))
			c.data(1, true, []byte("e"))
		}, "reset PROTOCOL_ERROR", false},
		{"HEADERS depending on themselves", func(c *h2Client) {
			c.headersPriority(1, get(c)...)
		}, "reset PROTOCOL_ERROR", false},
		{"PRIORITY depending on itself", func(c *h2Client) {
			c.fr.WritePriority(1, http2.PriorityParam{StreamDep: 1, Weight: 15})
		}, "reset PROTOCOL_ERROR", false},
		{"DATA after the stream's end", func(c *h2Client) {
			c.headers(1, true, c.get("/ok")...)
			if got := c.await(1); got != "status 200" {
				c.fail = got
				return
			}
			c.data(1, true, []byte("late"))
		}, "reset STREAM_CLOSED", false},
		{"RST_STREAM on an idle stream", func(c *h2Client) { c.fr.WriteRSTStream(1, http2.ErrCodeCancel) }, "goaway PROTOCOL_ERROR", false},
		{"WINDOW_UPDATE on an idle stream", func(c *h2Client) { c.fr.WriteWindowUpdate(1, 1) }, "goaway PROTOCOL_ERROR", false},
		{"connection window overflow", func(c *h2Client) { c.fr.WriteWindowUpdate(0, 1<<31-1) }, "goaway FLOW_CONTROL_ERROR", false},
		{"DATA over the frame size", func(c *h2Client) {
			c.headers(1, false, post(c)...)
			c.data(1, true, make([]byte, c.maxFrame+1))
		}, "goaway FRAME_SIZE_ERROR", true},
	}
}

func h2Run(t *testing.T, app *h1App, tg h2Target, tc h2Case) {
	before := app.len()
	c, err := h2Dial(tg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Cases run one after another, but the head of a streamed body
	// (partial) may reach the app after its case ended: each looks for
	// its own path only.
	c.refused = fmt.Sprintf("/refused-%d", h2CaseCount.Add(1))
	tc.run(c)
	if c.fail != "" {
		t.Fatalf("setup: %s", c.fail)
	}
	if got := c.await(1); got != tc.want {
		t.Fatalf("answer %q, want %q", got, tc.want)
	}
	if strings.HasPrefix(tc.want, "goaway") {
		// A connection error: the connection closes after its GOAWAY.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			if _, err := c.fr.ReadFrame(); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("connection still open after the GOAWAY")
				}
				break
			}
		}
	} else {
		// A stream error: the connection serves on.
		c.headers(3, true, c.get("/after")...)
		if got := c.await(3); got != "status 200" {
			t.Fatalf("a request after the stream error: %q", got)
		}
	}
	seen := app.since(before)
	_, refused, found := strings.Cut(seen, c.refused+" ")
	switch {
	case tc.partial && strings.Contains(refused, "\r\n0\r\n\r\n"):
		t.Errorf("the app received the refused request complete:\n%q", seen)
	case !tc.partial && (found || strings.Contains(seen, c.refused+"\r\n")):
		t.Errorf("the app received the refused request:\n%q", seen)
	}
}

// get is a GET request's header block.
func (c *h2Client) get(path string) []hpack.HeaderField {
	return []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: c.authority}, {Name: ":path", Value: path}}
}

// h2Client writes frames of its own making.
type h2Client struct {
	net.Conn
	fr        *http2.Framer
	enc       *hpack.Encoder
	dec       *hpack.Decoder
	hbuf      bytes.Buffer
	maxFrame  int
	authority string
	refused   string // the path of the case's refused request
	fail      string
}

// h2Dial connects and exchanges SETTINGS, learning the server's frame size.
func h2Dial(tg h2Target) (*h2Client, error) {
	nc, err := tg.dial()
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(15 * time.Second))
	c := &h2Client{Conn: nc, fr: http2.NewFramer(nc, nc), dec: hpack.NewDecoder(4096, nil), maxFrame: 16 << 10, authority: tg.authority}
	c.enc = hpack.NewEncoder(&c.hbuf)
	io.WriteString(nc, http2.ClientPreface)
	c.fr.WriteSettings()
	f, err := c.fr.ReadFrame()
	if err != nil {
		nc.Close()
		return nil, err
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok {
		nc.Close()
		return nil, fmt.Errorf("first frame %v, want SETTINGS", f.Header().Type)
	}
	if v, ok := sf.Value(http2.SettingMaxFrameSize); ok {
		c.maxFrame = int(v)
	}
	c.fr.WriteSettingsAck()
	return c, nil
}

func (c *h2Client) block(fields []hpack.HeaderField) []byte {
	c.hbuf.Reset()
	for _, f := range fields {
		c.enc.WriteField(f)
	}
	return c.hbuf.Bytes()
}

func (c *h2Client) headers(id uint32, end bool, fields ...hpack.HeaderField) {
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block(fields), EndStream: end, EndHeaders: true})
}

func (c *h2Client) headersPriority(id uint32, fields ...hpack.HeaderField) {
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block(fields), EndStream: true, EndHeaders: true,
		Priority: http2.PriorityParam{StreamDep: id, Weight: 15}})
}

func (c *h2Client) data(id uint32, end bool, p []byte) {
	if len(p) > c.maxFrame {
		c.fr.AllowIllegalWrites = true
		defer func() { c.fr.AllowIllegalWrites = false }()
	}
	c.fr.WriteData(id, end, p)
}

// await reads frames until stream id is answered: "status NNN" (its
// response head), "reset CODE" or "goaway CODE"; or why it was not.
func (c *h2Client) await(id uint32) string {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return "read: " + err.Error()
		}
		switch f := f.(type) {
		case *http2.HeadersFrame:
			fields, err := c.dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				return "hpack: " + err.Error()
			}
			if f.StreamID == id && len(fields) > 0 && fields[0].Name == ":status" {
				if !f.StreamEnded() {
					c.drain(id)
				}
				return "status " + fields[0].Value
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return "reset " + f.ErrCode.String()
			}
		case *http2.GoAwayFrame:
			return "goaway " + f.ErrCode.String()
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.fr.WritePing(true, f.Data)
			}
		}
	}
}

// drain reads stream id's body to its end, giving back flow control.
func (c *h2Client) drain(id uint32) {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return
		}
		if d, ok := f.(*http2.DataFrame); ok && d.StreamID == id {
			if n := len(d.Data()); n > 0 {
				c.fr.WriteWindowUpdate(0, uint32(n))
			}
			if d.StreamEnded() {
				return
			}
		}
		if h, ok := f.(*http2.HeadersFrame); ok {
			c.dec.DecodeFull(h.HeaderBlockFragment())
			if h.StreamID == id && h.StreamEnded() {
				return
			}
		}
	}
}

// h2Relay listens on loopback and relays each connection to addr over
// mutual TLS with cert (ALPN h2), as a plain HTTP/2 client holding an SVID
// would connect: h2spec speaks to the sidecar's inbound through it.
func h2Relay(t *testing.T, addr string, cert *tls.Certificate) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	cfg := &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2"},
		// The relay stands in for a client; the inbound's own identity
		// is not what these tests check.
		InsecureSkipVerify: true}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
			if err != nil {
				in.Close()
				continue
			}
			wg.Add(2)
			pipe := func(dst, src net.Conn, closeWrite func()) {
				defer wg.Done()
				io.Copy(dst, src)
				closeWrite()
			}
			go pipe(out, in, func() { out.CloseWrite() })
			go pipe(in, out, func() { in.(*net.TCPConn).CloseWrite(); out.Close() })
		}
	}()
	return l
}

var h2spec struct {
	once sync.Once
	path string
	err  error
}

// h2specBinary builds h2spec, a tool of this module (go.mod pins it).
func h2specBinary(t *testing.T) string {
	h2spec.once.Do(func() {
		dir, err := os.MkdirTemp("", "h2spec")
		if err != nil {
			h2spec.err = err
			return
		}
		h2spec.path = filepath.Join(dir, "h2spec")
		out, err := exec.Command("go", "build", "-o", h2spec.path, "github.com/summerwind/h2spec/cmd/h2spec").CombinedOutput()
		if err != nil {
			h2spec.err = fmt.Errorf("build h2spec: %v\n%s", err, out)
		}
	})
	if h2spec.err != nil {
		t.Fatal(h2spec.err)
	}
	return h2spec.path
}

// h2specFailures cuts h2spec's output to its failures.
func h2specFailures(out []byte) string {
	if i := bytes.Index(out, []byte("Failures:")); i >= 0 {
		return string(out[i:])
	}
	return string(out)
}

// h2ProtocolErrors reads trellis_http2_protocol_errors_total{reason} on an
// admin port.
func h2ProtocolErrors(t *testing.T, admin, reason string) float64 {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	prefix := `trellis_http2_protocol_errors_total{reason="` + reason + `"} `
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}
