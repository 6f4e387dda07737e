package l7

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// A gateway's HTTPS listener logs a failed handshake at info level with
// the client's address, the SNI and the reason.
func TestServerLogsFailedHandshake(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	cert := ca.SVID(t, "gw", 0)
	var logs syncBuffer
	srv := NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), slog.New(slog.NewTextHandler(&logs, nil)))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(tls.NewListener(l, certs.EdgeServerConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }, nil, "http/1.1")))
	t.Cleanup(func() { srv.Close() })

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "shop.example", InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if tc.Handshake() == nil {
		t.Fatal("TLS 1.1 accepted")
	}
	tc.Close()
	trellistest.Eventually(t, 5*time.Second, "the failed handshake logged", func() error {
		s := logs.String()
		if !strings.Contains(s, "TLS handshake failed") {
			return errors.New("not yet")
		}
		for _, want := range []string{"level=INFO", "remote=" + c.LocalAddr().String(), "unsupported versions"} {
			if !strings.Contains(s, want) {
				t.Fatalf("log %q lacks %q", s, want)
			}
		}
		return nil
	})
}
