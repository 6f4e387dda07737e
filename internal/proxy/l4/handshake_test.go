package l4

import (
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// A handshake with a certificate from a CA the mesh does not trust is
// logged at info level with the peer's address, the SNI and ALPN, the
// identity it claimed and the reason; the listener still serves
// afterwards.
func TestFailedHandshakeIsLoggedWithPeerAndReason(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	var logs syncBuffer
	in := &Inbound{TLS: ca.Source(t, "web").ServerConfig(nil, ALPN), Authorize: allowAll, Target: echoApp(t),
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go in.Serve(l)
	t.Cleanup(func() { l.Close() })

	rogue := trellistest.NewCA(t, "trellis.local")
	// mallory trusts the mesh, but her certificate is the rogue CA's.
	src := &certs.Source{}
	src.SetCertificate(rogue.SVID(t, "mallory", 0))
	src.SetBundle(ca.Bundle(t))
	cfg := src.ClientConfig(nil, ALPN)
	cfg.ServerName = "web.mesh"
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, cfg)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	err = tc.Handshake()
	if err == nil {
		// TLS 1.3: the client is done before the server judges its
		// certificate; the refusal shows on the first read.
		_, err = tc.Read(make([]byte, 1))
	}
	tc.Close()
	if err == nil {
		t.Fatal("a certificate from an unknown CA was accepted")
	}
	local := c.LocalAddr().String()
	trellistest.Eventually(t, 5*time.Second, "the failed handshake logged", func() error {
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, "inbound peer certificate rejected") {
				for _, want := range []string{"level=INFO", "remote=" + local, "sni=web.mesh", "alpn=" + ALPN,
					"claimed=spiffe://trellis.local/svc/mallory", "reason=untrusted", "unknown authority"} {
					if !strings.Contains(line, want) {
						t.Fatalf("log line %q lacks %q", line, want)
					}
				}
				return nil
			}
		}
		return errAbsent
	})

	// Still serving.
	pool := NewPool(0, 0, nil)
	t.Cleanup(pool.Close)
	out := serveOutbound(t, "web", l.Addr().String(), ca.Source(t, "client"), pool)
	if got, err := roundTrip(out, []byte("ok")); err != nil || string(got) != "ok" {
		t.Errorf("after the bad handshake: %q, %v", got, err)
	}
}

var errAbsent = errString("no such log line yet")

type errString string

func (e errString) Error() string { return string(e) }
