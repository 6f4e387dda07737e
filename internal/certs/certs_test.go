package certs_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// serve runs a TLS server that answers each connection with the peer's
// service name, and returns its address.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return trellistest.Serve(t, l, func(c net.Conn) {
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			return
		}
		id, _ := certs.PeerID(tc.ConnectionState())
		io.WriteString(c, id.Service())
	})
}

func dial(addr string, cfg *tls.Config) (string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	if len(b) == 0 {
		return "", errors.New("connection closed without an answer")
	}
	return string(b), nil
}

func TestMutualTLS(t *testing.T) {
	mesh := trellistest.NewCA(t, "trellis.local")
	otherCA := trellistest.NewCA(t, "trellis.local")

	server := mesh.Source(t, "greeting")
	onlyGreeter := func(id identity.ID) error {
		if id.Service() != "greeter" {
			return errors.New("not allowed")
		}
		return nil
	}
	addr := serve(t, server.ServerConfig(onlyGreeter))

	greeter := mesh.Source(t, "greeter")
	tests := []struct {
		name    string
		cfg     *tls.Config
		wantErr bool
	}{
		{"allowed peer", greeter.ClientConfig(certs.ExpectService("greeting")), false},
		{"no client certificate", &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}, true},
		{"certificate from another CA", func() *tls.Config {
			s := &certs.Source{}
			s.SetCertificate(otherCA.SVID(t, "greeter", 0))
			s.SetBundle(mesh.Bundle(t))
			return s.ClientConfig(nil)
		}(), true},
		{"valid SVID of the wrong service", mesh.Source(t, "name").ClientConfig(nil), true},
		{"client expects another service", greeter.ClientConfig(certs.ExpectService("name")), true},
		{"TLS 1.2 client", func() *tls.Config {
			c := greeter.ClientConfig(nil)
			c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			return c
		}(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := dial(addr, tt.cfg)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("connection succeeded (server saw %q), want refusal", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			if got != "greeter" {
				t.Errorf("server saw peer %q, want greeter", got)
			}
		})
	}
}

func TestVerifySVIDRejectsNonSVIDs(t *testing.T) {
	mesh := trellistest.NewCA(t, "trellis.local")
	b := mesh.Bundle(t)
	// The CA certificate itself is a CA: never a valid leaf.
	if _, err := certs.VerifySVID([]*x509.Certificate{mesh.Certificate()}, b, time.Now()); !errors.Is(err, certs.ErrNotSVID) {
		t.Errorf("CA as leaf: err = %v, want ErrNotSVID", err)
	}
	if _, err := certs.VerifySVID(nil, b, time.Now()); !errors.Is(err, certs.ErrNoCertificate) {
		t.Errorf("no certs: err = %v, want ErrNoCertificate", err)
	}
	leaf := mesh.SVID(t, "a", time.Hour)
	if _, err := certs.VerifySVID([]*x509.Certificate{leaf.Leaf}, b, time.Now().Add(2*time.Hour)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired leaf: err = %v, want expiry error", err)
	}
	otherTD := trellistest.NewCA(t, "other.local")
	ob := otherTD.Bundle(t)
	ob.TrustDomain = "trellis.local" // roots of other.local, expecting trellis.local
	if _, err := certs.VerifySVID([]*x509.Certificate{otherTD.SVID(t, "a", 0).Leaf}, ob, time.Now()); err == nil {
		t.Error("leaf of another trust domain accepted")
	}
}
