//go:build linux

package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
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

// Issue 19 against the real binary: one client attacks a listener (the
// gateway's ingress, a sidecar's outbound) with stream hoarding, rapid
// reset and stalled readers, all at once, while a second client's
// requests and a 20 MB download must all succeed.

// overloadApp serves / (small), /download (20 MB) and /slow, which holds
// its request until the caller goes away, counting those it holds.
type overloadApp struct {
	port int
	slow atomic.Int64
}

const overloadDownload = 20 << 20

func overloadStartApp(t *testing.T) *overloadApp {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &overloadApp{port: l.Addr().(*net.TCPAddr).Port}
	chunk := bytes.Repeat([]byte("d"), 64<<10)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			a.slow.Add(1)
			defer a.slow.Add(-1)
			<-r.Context().Done()
		case "/download":
			w.Header().Set("Content-Length", strconv.Itoa(overloadDownload))
			for n := 0; n < overloadDownload; n += len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		default:
			io.WriteString(w, "ok")
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return a
}

func TestOverloadFromOneClient(t *testing.T) {
	s := startServer(t)
	app := overloadStartApp(t)
	httpPort := trellistest.FreePort(t)
	frontWeb(t, s, frontHTTP(httpPort))
	s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	up, _ := loopAddr(t)
	_, upPort, _ := net.SplitHostPort(up)
	s.startProxy(t, proxyOpts{service: "client", appPort: app.port, upstreams: []string{"web:" + upPort}})
	s.startFront(t)
	for _, target := range []struct{ name, addr string }{
		{"ingress", "127.0.0.1:" + strconv.Itoa(httpPort)},
		{"outbound", up},
	} {
		t.Run(target.name, func(t *testing.T) {
			trellistest.Eventually(t, 30*time.Second, "serving", func() error { return overloadGet(target.addr, "/") })
			overloadRun(t, app, target.addr)
		})
	}
}

func overloadRun(t *testing.T, app *overloadApp, addr string) {
	// What an earlier run held is let go as its connections close.
	trellistest.Eventually(t, 30*time.Second, "no stream held at the app", func() error {
		if n := app.slow.Load(); n != 0 {
			return fmt.Errorf("%d held", n)
		}
		return nil
	})
	var attackers []net.Conn
	defer func() {
		for _, c := range attackers {
			c.Close()
		}
	}()
	dial := func() *overloadConn {
		c, err := overloadDial(addr)
		if err != nil {
			t.Fatal(err)
		}
		attackers = append(attackers, c.Conn)
		return c
	}

	// Stream hoarding: 18 connections asking for 250 held streams each.
	const hoarders, perHoarder, perConn = 18, 250, 100
	for range hoarders {
		c := dial()
		for i := range perHoarder {
			c.get(uint32(2*i+1), "/slow", true)
		}
		c.bw.Flush()
		go c.drain() // reads (and so lets the server write its refusals)
	}
	trellistest.Eventually(t, 60*time.Second, "the hoarded streams held at the app", func() error {
		if n := app.slow.Load(); n < hoarders*perConn {
			return fmt.Errorf("%d held, want %d", n, hoarders*perConn)
		}
		return nil
	})
	if n := app.slow.Load(); n > hoarders*perConn {
		t.Errorf("%d streams held for one client's %d connections, want at most %d each", n, hoarders, perConn)
	}

	// Rapid reset from one more connection, in the background.
	rr := dial()
	calm := make(chan error, 1)
	go func() {
		for i := range 20000 {
			id := uint32(2*i + 1)
			rr.get(id, "/", false)
			rr.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		rr.bw.Flush()
	}()
	go func() { calm <- rr.awaitGoAway(http2.ErrCodeEnhanceYourCalm) }()

	// Stalled readers: ten downloads nobody reads.
	for range 10 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		attackers = append(attackers, c)
		fmt.Fprintf(c, "GET /download HTTP/1.1\r\nHost: web\r\n\r\n")
	}

	// Meanwhile a second client: every request, and its download, whole.
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := overloadGet(addr, "/"); err != nil {
				errs <- err
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := overloadDownloadAll(addr); err != nil {
			errs <- err
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("the other client: %v", err)
	}
	if err := <-calm; err != nil {
		t.Errorf("rapid reset: %v", err)
	}
}

// overloadGet sends one request on a connection of its own (HTTP/2 with
// prior knowledge) and wants 200 "ok".
func overloadGet(addr, path string) error {
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, a string, _ *tls.Config) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://web"+path, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || string(b) != "ok" {
		return fmt.Errorf("GET %s: %d %q %v", path, resp.StatusCode, b, err)
	}
	return nil
}

// overloadDownloadAll reads /download over HTTP/1.1 to its end.
func overloadDownloadAll(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	fmt.Fprintf(c, "GET /download HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || resp.StatusCode != 200 || n != overloadDownload {
		return fmt.Errorf("download: status %d, %d of %d bytes, %v", resp.StatusCode, n, overloadDownload, err)
	}
	return nil
}

// overloadConn is an attacker's HTTP/2 connection, frames of its making.
type overloadConn struct {
	net.Conn
	bw   *bufio.Writer
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

func overloadDial(addr string) (*overloadConn, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &overloadConn{Conn: nc, bw: bufio.NewWriterSize(nc, 64<<10)}
	c.fr = http2.NewFramer(c.bw, nc)
	c.enc = hpack.NewEncoder(&c.hbuf)
	io.WriteString(c.bw, http2.ClientPreface)
	c.fr.WriteSettings()
	return c, nil
}

func (c *overloadConn) get(id uint32, path string, end bool) {
	c.hbuf.Reset()
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "web"}, {Name: ":path", Value: path}} {
		c.enc.WriteField(f)
	}
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndStream: end, EndHeaders: true})
}

// drain reads and drops what the server sends, until the connection ends.
func (c *overloadConn) drain() { io.Copy(io.Discard, c.Conn) }

// awaitGoAway reads frames until a GOAWAY, which must carry code.
func (c *overloadConn) awaitGoAway(code http2.ErrCode) error {
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("no GOAWAY: %v", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != code {
				return fmt.Errorf("GOAWAY %v, want %v", ga.ErrCode, code)
			}
			return nil
		}
	}
}

// TestStalledReaderMemory measures what a stalled reader costs the
// gateway: 50 downloads of 20 MB whose clients never read, as 50 streams
// of one HTTP/2 connection (which never returns window) and as 50
// HTTP/1.1 connections. It logs the gateway's RSS growth per stalled
// download, once the growth has settled. A measurement, not a test: it
// runs only under bench/stalled-readers.sh (TRELLIS_MEASURE=1).
func TestStalledReaderMemory(t *testing.T) {
	if os.Getenv("TRELLIS_MEASURE") == "" {
		t.Skip("a measurement: run bench/stalled-readers.sh")
	}
	s := startServer(t)
	app := overloadStartApp(t)
	httpPort := trellistest.FreePort(t)
	frontWeb(t, s, frontHTTP(httpPort))
	s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	gw, _ := s.startFront(t)
	addr := "127.0.0.1:" + strconv.Itoa(httpPort)
	trellistest.Eventually(t, 30*time.Second, "serving", func() error { return overloadGet(addr, "/") })
	const n = 50
	for _, mode := range []string{"h2", "http1"} {
		// Warm up: the download path once, read whole.
		if err := overloadDownloadAll(addr); err != nil {
			t.Fatal(err)
		}
		before := settledRSS(t, gw.pid())
		var conns []net.Conn
		if mode == "h2" {
			c, err := overloadDial(addr)
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				c.get(uint32(2*i+1), "/download", true)
			}
			c.bw.Flush()
			conns = append(conns, c.Conn)
		} else {
			for range n {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(c, "GET /download HTTP/1.1\r\nHost: web\r\n\r\n")
				conns = append(conns, c)
			}
		}
		after := settledRSS(t, gw.pid())
		t.Logf("%s: gateway RSS %d KiB -> %d KiB: %d KiB per stalled download", mode, before, after, (after-before)/n)
		for _, c := range conns {
			c.Close()
		}
	}
}

// settledRSS returns pid's VmRSS (KiB) once it has stopped growing: two
// readings half a second apart within 1 %.
func settledRSS(t *testing.T, pid int) int {
	read := func() int {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				n, _ := strconv.Atoi(strings.Fields(v)[0])
				return n
			}
		}
		t.Fatal("no VmRSS")
		return 0
	}
	last := read()
	for range 60 {
		time.Sleep(500 * time.Millisecond) // a measurement settling, not a test waiting
		now := read()
		if now-last < last/100 {
			return now
		}
		last = now
	}
	return last
}
