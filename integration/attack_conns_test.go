//go:build linux

package integration

import (
	"bufio"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// Issue 17 item 4 (data plane) and item 8 (profiler, handshake logs),
// against the real binary.

// connsNotAfter reads the expiry of a proxy's current SVID from /certs.
func connsNotAfter(t *testing.T, admin string) time.Time {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/certs")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c struct {
		NotAfter time.Time `json:"notAfter"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	return c.NotAfter
}

// connsTuples returns the established TCP connections to port on this
// host (IPv4), as "localport>remoteport" of the dialing side: the mTLS
// connections a client proxy holds to a peer's public port.
func connsTuples(t *testing.T, port int) map[string]bool {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[3] != "01" { // ESTABLISHED
			continue
		}
		local, remote := connsPort(fields[1]), connsPort(fields[2])
		if remote == port {
			out[fmt.Sprintf("%d>%d", local, remote)] = true
		}
	}
	return out
}

// connsPort is the port of a /proc/net/tcp address ("0100007F:1F90").
func connsPort(addr string) int {
	_, hexPort, ok := strings.Cut(addr, ":")
	if !ok {
		return -1
	}
	b, err := hex.DecodeString(hexPort)
	if err != nil || len(b) != 2 {
		return -1
	}
	return int(b[0])<<8 | int(b[1])
}

// connsMetric sums a metric's samples on a proxy's /metrics whose labels
// contain every one of match.
func connsMetric(t *testing.T, admin, name string, match ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(line, m)
		}
		if !ok {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			v, _ := strconv.ParseFloat(line[i+1:], 64)
			sum += v
		}
	}
	return sum
}

// A connection between two sidecars does not outlive the leaves it was
// made with: with 12s SVIDs, the pooled mTLS connection of the first
// requests is closed before the first leaf expires (so no stream reaches
// the app through it afterwards), the long-lived stream on it ends with
// it, the pool replaces it, and a steady load of new requests sees no
// failure.
func TestConnsRetiredBeforeLeafExpiry(t *testing.T) {
	p := startPair(t, "--svid-ttl", "12s")
	expires := connsNotAfter(t, p.webProxy.admin)
	if c := connsNotAfter(t, p.client.admin); c.Before(expires) {
		expires = c
	}
	_, port, _ := net.SplitHostPort(p.webEndpoint(t))
	webPort, _ := strconv.Atoi(port)
	first := connsTuples(t, webPort)
	if len(first) == 0 {
		t.Fatal("no mTLS connection from the client proxy to web's public port")
	}
	if time.Until(expires) < 3*time.Second {
		t.Skipf("the first leaves expire in %v: too soon to watch", time.Until(expires))
	}

	// A long-lived stream: one HTTP/1.1 keep-alive connection through the
	// upstream listener, a request every 200ms.
	var longEnded atomic.Pointer[time.Time]
	long, err := net.Dial("tcp", p.upstream)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	go func() {
		br := bufio.NewReader(long)
		for {
			long.SetDeadline(time.Now().Add(5 * time.Second))
			_, err := io.WriteString(long, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
			if err == nil {
				var resp *http.Response
				if resp, err = http.ReadResponse(br, nil); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
			if err != nil {
				now := time.Now()
				longEnded.Store(&now)
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()

	l := startLoad(p.upstream, 4)
	gone := map[string]time.Time{}
	for time.Now().Before(expires.Add(2 * time.Second)) {
		now := connsTuples(t, webPort)
		for c := range first {
			if _, seen := gone[c]; !seen && !now[c] {
				gone[c] = time.Now()
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.halt()

	if f := l.failed.Load(); f != 0 {
		t.Errorf("%d of %d requests failed across the retirement; last error: %v", f, f+l.ok.Load(), l.lastErr.Load())
	}
	if l.ok.Load() < 100 {
		t.Errorf("only %d requests succeeded; the load did not run", l.ok.Load())
	}
	for c := range first {
		at, ok := gone[c]
		switch {
		case !ok:
			t.Errorf("mTLS connection %s made with leaves expiring at %v still open at %v", c, expires, time.Now())
		case !at.Before(expires):
			t.Errorf("mTLS connection %s closed at %v, after its leaf expired at %v", c, at, expires)
		}
	}
	if at := longEnded.Load(); at == nil || !at.Before(expires) {
		t.Errorf("the long-lived stream on the old connection ended at %v, want before %v", at, expires)
	}
	if n := connsMetric(t, p.client.admin, "trellis_tls_connections_retired_total", `reason="expiry"`, `direction="outbound"`); n < 1 {
		t.Errorf("client proxy: trellis_tls_connections_retired_total{outbound,expiry} = %v, want at least 1", n)
	}
	if log := p.client.logText(); !strings.Contains(log, "retiring mTLS connection") || !strings.Contains(log, "spiffe://") {
		t.Errorf("client proxy log has no retirement line with the peer's identity:\n%s", tail(log, 20))
	}
	t.Logf("expires %v; %d requests, none failed; first connections closed %v before the leaves' expiry", expires, l.ok.Load(), func() (d []time.Duration) {
		for _, at := range gone {
			d = append(d, expires.Sub(at).Round(time.Millisecond))
		}
		return d
	}())
}

// The profiler is off on the admin port unless --pprof; a handshake with
// a certificate the mesh did not issue is refused, logged with the peer
// and the reason, reaches nothing, and the proxy still serves.
func TestConnsPprofAndHandshakeLog(t *testing.T) {
	p := startPair(t)
	get404 := func(admin string) int {
		resp, err := http.Get("http://" + admin + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get404(p.webProxy.admin); code != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/ without --pprof = %d, want 404", code)
	}
	other := startApp(t, "other")
	prof := p.srv.startProxy(t, proxyOpts{service: "other", appPort: other.port, extra: []string{"--pprof"}})
	if code := get404(prof.admin); code != http.StatusOK {
		t.Errorf("GET /debug/pprof/ with --pprof = %d, want 200", code)
	}

	p.web.mu.Lock()
	hits := p.web.hits
	p.web.mu.Unlock()
	rogue := trellistest.NewCA(t, "trellis.local")
	cert := rogue.SVID(t, "client", 0)
	c, err := net.Dial("tcp", p.webEndpoint(t))
	if err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().String()
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*cert}, NextProtos: []string{"trellis/h2"}, ServerName: "web"})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	err = tc.Handshake()
	if err == nil {
		io.WriteString(tc, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
		_, err = tc.Read(make([]byte, 1))
	}
	tc.Close()
	if err == nil {
		t.Fatal("a rogue CA's certificate was accepted on the public port")
	}
	trellistest.Eventually(t, 5*time.Second, "the refused handshake in the proxy's log", func() error {
		for _, line := range strings.Split(p.webProxy.logText(), "\n") {
			if strings.Contains(line, "inbound peer certificate rejected") && strings.Contains(line, local) {
				for _, want := range []string{"unknown authority", "INFO", "reason=untrusted", "sni=web", "claimed=spiffe://trellis.local/svc/client"} {
					if !strings.Contains(line, want) {
						return fmt.Errorf("log line %q lacks %q", line, want)
					}
				}
				return nil
			}
		}
		return fmt.Errorf("no line for %s", local)
	})
	p.web.mu.Lock()
	after := p.web.hits
	p.web.mu.Unlock()
	if after != hits {
		t.Errorf("the app saw %d requests during the refused handshake, want 0", after-hits)
	}
	if n := connsMetric(t, p.webProxy.admin, "trellis_tls_handshakes_total", `side="server"`, `result="error"`); n < 1 {
		t.Errorf("trellis_tls_handshakes_total{server,error} = %v, want at least 1", n)
	}
	if got, err := get(p.upstream); err != nil || got != "web" {
		t.Errorf("after the refused handshake: %q, %v", got, err)
	}
}
