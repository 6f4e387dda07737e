//go:build linux

package integration

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// The HTTP/2 floods of issue 18 item 7 against the real binary: a raw
// framer floods a sidecar's outbound h2c listener with frames that carry
// no work. Each flood ends its connection with GOAWAY ENHANCE_YOUR_CALM,
// is counted in trellis_http2_protocol_errors_total{reason} and logged
// with the peer, no byte reaches the app, and the listener still serves.
func TestFloodAttackOutboundH2C(t *testing.T) {
	s := startServer(t)
	app := h1StartApp(t)
	applyYAML(t, s, "kind: Service\nname: web\nspec: {protocol: http}\n---\n"+
		"kind: Intention\nname: client.web\nspec: {source: client, destination: web, action: allow}\n")
	s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	up, upPort := loopAddr(t)
	client := s.startProxy(t, proxyOpts{service: "client", appPort: app.port, upstreams: []string{fmt.Sprintf("web:%d", upPort)}})
	trellistest.Eventually(t, 30*time.Second, "h2c serving", func() error {
		if st, err := h1H2C(up, "/", nil); err != nil || st != 200 {
			return fmt.Errorf("status %d, %v", st, err)
		}
		return nil
	})
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "web"}, {":path", "/flood"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	post := hb.Bytes()
	for _, tc := range []struct {
		reason string
		start  func(fr *http2.Framer) error
		flood  func(fr *http2.Framer, i int) error
		// reaches: the flood rides on a request, whose head may reach
		// the app.
		reaches bool
	}{
		{"settings_flood", nil, func(fr *http2.Framer, i int) error { return fr.WriteSettings() }, false},
		{"ping_flood", nil, func(fr *http2.Framer, i int) error { return fr.WritePing(false, [8]byte{byte(i)}) }, false},
		{"window_update_flood", nil, func(fr *http2.Framer, i int) error { return fr.WriteWindowUpdate(0, 1) }, false},
		{"priority_flood", nil, func(fr *http2.Framer, i int) error {
			return fr.WritePriority(uint32(2*i+1), http2.PriorityParam{Weight: 15})
		}, false},
		{"empty_continuation_flood", func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: post[:1]})
		}, func(fr *http2.Framer, i int) error { return fr.WriteContinuation(1, false, nil) }, false},
		{"empty_data_flood", func(fr *http2.Framer) error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: post, EndHeaders: true})
		}, func(fr *http2.Framer, i int) error { return fr.WriteData(1, false, nil) }, true},
	} {
		t.Run(tc.reason, func(t *testing.T) {
			before := floodMetric(t, client.admin, tc.reason)
			seen := app.len()
			c, err := net.DialTimeout("tcp", up, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			bw := bufio.NewWriterSize(c, 64<<10)
			wfr := http2.NewFramer(bw, nil)
			io.WriteString(bw, http2.ClientPreface)
			wfr.WriteSettings()
			if tc.start != nil {
				tc.start(wfr)
			}
			go func() {
				for i := range 500000 {
					if tc.flood(wfr, i) != nil {
						return
					}
					if i%1024 == 0 && bw.Flush() != nil {
						return
					}
				}
				bw.Flush()
			}()
			// A well-behaved client on another connection is served
			// meanwhile.
			if st, err := h1H2C(up, "/during", nil); err != nil || st != 200 {
				t.Errorf("well-behaved client during the flood: status %d, %v", st, err)
			}
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			rfr := http2.NewFramer(nil, c)
			var away *http2.GoAwayFrame
			for away == nil {
				f, err := rfr.ReadFrame()
				if err != nil {
					t.Fatalf("connection ended without a GOAWAY: %v", err)
				}
				away, _ = f.(*http2.GoAwayFrame)
			}
			if away.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Fatalf("GOAWAY %v (%q), want ENHANCE_YOUR_CALM", away.ErrCode, away.DebugData())
			}
			for {
				if _, err := rfr.ReadFrame(); err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						t.Fatalf("connection still open after the GOAWAY")
					}
					break
				}
			}
			trellistest.Eventually(t, 10*time.Second, "the flood counted", func() error {
				if got := floodMetric(t, client.admin, tc.reason); got != before+1 {
					return fmt.Errorf("trellis_http2_protocol_errors_total{reason=%q} = %v, want %v", tc.reason, got, before+1)
				}
				return nil
			})
			trellistest.Eventually(t, 10*time.Second, "the flood logged", func() error {
				for _, line := range strings.Split(client.logText(), "\n") {
					if strings.Contains(line, "flooded") && strings.Contains(line, tc.reason) && strings.Contains(line, c.LocalAddr().String()) {
						return nil
					}
				}
				return fmt.Errorf("no log line with reason %s and peer %s", tc.reason, c.LocalAddr())
			})
			// The well-behaved client's requests reach the app; nothing
			// of the flooding connection may.
			if got := app.since(seen); !tc.reaches && strings.Contains(got, "/flood") {
				t.Errorf("the flooding connection's request reached the app:\n%q", got)
			}
			if st, err := h1H2C(up, "/after", nil); err != nil || st != 200 {
				t.Errorf("listener after the flood: status %d, %v", st, err)
			}
		})
	}
}

// floodMetric reads trellis_http2_protocol_errors_total{reason} on an
// admin port (0 when absent).
func floodMetric(t *testing.T, admin, reason string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	prefix := `trellis_http2_protocol_errors_total{reason="` + reason + `"} `
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// The sidecar-to-sidecar port (mTLS, ALPN trellis/h2) is the same HTTP/2
// layer: a mesh peer with a valid certificate that floods it with PINGs
// is cut off the same way, and another connection is served meanwhile.
func TestFloodAttackInboundMTLS(t *testing.T) {
	s := startServer(t)
	app := h1StartApp(t)
	applyYAML(t, s, "kind: Service\nname: web\nspec: {protocol: http}\n---\n"+
		"kind: Intention\nname: client.web\nspec: {source: client, destination: web, action: allow}\n")
	web := s.startProxy(t, proxyOpts{service: "web", appPort: app.port})
	s.waitInstances(t, 10*time.Second, "web registered", "web", 1)
	ins, _ := s.api.Instances(t.Context(), "web")
	ep := net.JoinHostPort(ins[0].Address, fmt.Sprint(ins[0].Port))
	tlsCfg := meshPeer(t, s, "client").ClientConfig(certs.ExpectService("web"), l4.ALPN)
	dial := func() *tls.Conn {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ep, tlsCfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	before := floodMetric(t, web.admin, "ping_flood")

	c := dial()
	go func() {
		bw := bufio.NewWriterSize(c, 64<<10)
		fr := http2.NewFramer(bw, nil)
		io.WriteString(bw, http2.ClientPreface)
		fr.WriteSettings()
		for i := range 500000 {
			if fr.WritePing(false, [8]byte{byte(i)}) != nil {
				return
			}
			if i%1024 == 0 && bw.Flush() != nil {
				return
			}
		}
		bw.Flush()
	}()
	// Another connection from the mesh is served meanwhile: it gets its
	// PING answered.
	good := dial()
	good.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(good, http2.ClientPreface)
	gfr := http2.NewFramer(good, good)
	gfr.WriteSettings()
	gfr.WritePing(false, [8]byte{'o', 'k'})
	for {
		f, err := gfr.ReadFrame()
		if err != nil {
			t.Fatalf("well-behaved connection during the flood: %v", err)
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
			break
		}
	}

	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	rfr := http2.NewFramer(nil, c)
	for {
		f, err := rfr.ReadFrame()
		if err != nil {
			t.Fatalf("connection ended without a GOAWAY: %v", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", ga.ErrCode)
			}
			break
		}
	}
	trellistest.Eventually(t, 10*time.Second, "the flood counted and logged", func() error {
		if got := floodMetric(t, web.admin, "ping_flood"); got != before+1 {
			return fmt.Errorf("trellis_http2_protocol_errors_total{reason=\"ping_flood\"} = %v, want %v", got, before+1)
		}
		for _, line := range strings.Split(web.logText(), "\n") {
			if strings.Contains(line, "flooded") && strings.Contains(line, "ping_flood") && strings.Contains(line, c.LocalAddr().String()) {
				return nil
			}
		}
		return fmt.Errorf("no log line with the peer %s", c.LocalAddr())
	})
}
