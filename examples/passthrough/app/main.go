// Command app is a service of the passthrough example that terminates its
// own TLS: at start it makes a self-signed certificate for $DNS_NAME and
// serves HTTPS on 127.0.0.1:$PORT. Its sidecar's edge listener passes the
// TLS bytes through untouched and, first, a PROXY protocol v2 header with
// the client's address, which the app reads and shows.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

func main() {
	name, service := os.Getenv("DNS_NAME"), os.Getenv("TRELLIS_SERVICE")
	cert, err := selfSigned(name)
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from %s, over its own TLS as %s; you are %s\n", service, r.TLS.ServerName, r.RemoteAddr)
	})
	l, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	if err != nil {
		log.Fatal(err)
	}
	// The PROXY header is optional: health checks come straight from the
	// sidecar without one.
	pl := &proxyproto.Listener{Listener: l, Policy: func(net.Addr) (proxyproto.Policy, error) { return proxyproto.USE, nil }}
	log.Printf("%s serves HTTPS for %s on %s", service, name, l.Addr())
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(probeFilter{os.Stderr}, "", log.LstdFlags)}
	log.Fatal(srv.Serve(tls.NewListener(pl, &tls.Config{Certificates: []tls.Certificate{cert}})))
}

// probeFilter drops net/http's "TLS handshake error ... EOF": a
// connection closed before it sent a byte is a TCP health check (the
// sidecar's, every second, or a load balancer's), not an error. Every
// other handshake error is still logged.
type probeFilter struct{ w io.Writer }

func (f probeFilter) Write(b []byte) (int, error) {
	if line := strings.TrimSpace(string(b)); strings.Contains(line, "TLS handshake error") && strings.HasSuffix(line, ": EOF") {
		return len(b), nil
	}
	return f.w.Write(b)
}

func selfSigned(name string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
