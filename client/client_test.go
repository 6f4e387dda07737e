package client_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// A fake API with a certificate the mesh CA signed for something else must
// not receive the token: the review's attack was an edge certificate for
// "localhost" that a Service's dnsNames allowed.
func TestClientRequiresServerID(t *testing.T) {
	mesh := trellistest.NewCA(t, "trellis.local")
	caKey, err := ca.ParsePrivateKey(mesh.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	// handMade signs with the CA key directly, as a CA that issued a bad
	// certificate would.
	// The SAN extension is written by hand: crypto/x509 would normalize
	// the URI (lower-case the scheme, drop an empty fragment).
	handMade := func(uri string, eku []x509.ExtKeyUsage) *tls.Certificate {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		var san cryptobyte.Builder
		san.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte("localhost")) })
			b.AddASN1(cbasn1.Tag(6).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(uri)) })
		})
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "x"},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku,
			ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: san.BytesOrPanic()}},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, mesh.Certificate(), &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	signed := func(sign func(csr []byte) ([]byte, error)) *tls.Certificate {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		chain, err := sign(csr)
		if err != nil {
			t.Fatal(err)
		}
		keyPEM, _ := certs.EncodeKey(key)
		c, err := certs.KeyPair(chain, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	serverAuth := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		want string // "" for accepted
	}{
		{"serving certificate", signed(func(csr []byte) ([]byte, error) {
			k, _ := x509.ParseCertificateRequest(csr)
			return mesh.SignServing(ca.ServingRequest{PublicKey: k.PublicKey, DNSNames: []string{"localhost"}})
		}), ""},
		{"edge certificate for localhost", signed(func(csr []byte) ([]byte, error) {
			return mesh.SignEdge(ca.EdgeRequest{CSR: csr, Service: "evil", DNSNames: []string{"localhost"}})
		}), "0 URI SANs"},
		{"workload SVID", mesh.SVID(t, "trellis-server", 0), "not valid for any names"},
		{"server ID with an empty fragment", handMade("spiffe://trellis.local/trellis/server#", serverAuth), "not a control plane"},
		{"server ID with an empty query", handMade("spiffe://trellis.local/trellis/server?", serverAuth), "not a control plane"},
		{"server ID in upper case", handMade("SPIFFE://trellis.local/trellis/server", serverAuth), "not a control plane"},
		{"server ID with a port", handMade("spiffe://trellis.local:1/trellis/server", serverAuth), "not a control plane"},
		{"server ID, client auth only", handMade("spiffe://trellis.local/trellis/server", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}), "usage"},
		{"a workload's ID", handMade("spiffe://trellis.local/svc/web", serverAuth), "not a control plane"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var gotToken bool
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				gotToken = r.Header.Get("Authorization") != ""
				w.Write([]byte(`{"trustDomain":"trellis.local","roots":""}`))
			}))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{*tc.cert}}
			srv.Config.ErrorLog = log.New(io.Discard, "", 0)
			srv.StartTLS()
			defer srv.Close()
			_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
			c, err := client.New(client.Config{Addr: "localhost:" + port, Token: "trellis_secretsecretsecret", CAPEM: mesh.RootsPEM()})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Roots(t.Context())
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused the real server: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one with %q", err, tc.want)
			case tc.want != "" && gotToken:
				t.Fatal("the fake server received the token")
			}
			// The same settings serve the proxies' gRPC stream.
			conn, err := tls.Dial("tcp", "localhost:"+port, c.TLSConfig())
			if (err == nil) != (tc.want == "") {
				t.Errorf("TLSConfig handshake: err = %v", err)
			}
			if conn != nil {
				conn.Close()
			}
		})
	}
}
