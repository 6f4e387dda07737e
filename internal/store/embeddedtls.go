package store

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// embeddedCreds are the credentials of one run of the embedded etcd, made
// fresh at every start so that nothing a past run left behind opens the
// store.
//
// Two throwaway CAs, whose keys are never written anywhere and are dropped
// once the certificates below are signed:
//   - the client CA signs etcd's serving certificate (serverAuth only) and
//     the one client certificate (clientAuth only), which lives only in this
//     process's memory: the client listener trusts nothing else;
//   - the peer CA signs the peer certificate, which etcd presents and would
//     dial with (both usages), so that the peer listener, which a single
//     member still opens, demands it too. The client listener does not
//     trust the peer CA, so the peer key, which etcd must read from a file,
//     does not open the store's API.
//
// etcd reads its own certificates and keys from files: they are written 0600
// in a 0700 directory inside the data dir.
type embeddedCreds struct {
	// client is the in-process client's TLS configuration.
	client *tls.Config
	// files etcd reads.
	caFile, certFile, keyFile             string
	peerCAFile, peerCertFile, peerKeyFile string
}

// embeddedHost is the only address both listeners bind and the name every
// certificate carries.
var embeddedHost = net.IPv4(127, 0, 0, 1)

// makeEmbeddedCreds writes etcd's credentials into dir (created 0700) and
// returns them with the in-memory client configuration.
func makeEmbeddedCreds(dir string, now time.Time) (*embeddedCreds, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcd credentials dir: %w", err)
	}
	// The directory is ours alone; tighten it if something loosened it.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcd credentials dir: %w", err)
	}
	clientCA, err := newCredCA("trellis embedded etcd client CA", now)
	if err != nil {
		return nil, err
	}
	peerCA, err := newCredCA("trellis embedded etcd peer CA", now)
	if err != nil {
		return nil, err
	}
	server, err := clientCA.issue("trellis embedded etcd", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, now)
	if err != nil {
		return nil, err
	}
	client, err := clientCA.issue("trellis server", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, now)
	if err != nil {
		return nil, err
	}
	peer, err := peerCA.issue("trellis embedded etcd peer", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, now)
	if err != nil {
		return nil, err
	}
	c := &embeddedCreds{
		caFile:       filepath.Join(dir, "client-ca.pem"),
		certFile:     filepath.Join(dir, "server.pem"),
		keyFile:      filepath.Join(dir, "server-key.pem"),
		peerCAFile:   filepath.Join(dir, "peer-ca.pem"),
		peerCertFile: filepath.Join(dir, "peer.pem"),
		peerKeyFile:  filepath.Join(dir, "peer-key.pem"),
	}
	for _, f := range []struct {
		path string
		pem  []byte
	}{
		{c.caFile, clientCA.certPEM()},
		{c.certFile, server.certPEM},
		{c.keyFile, server.keyPEM},
		{c.peerCAFile, peerCA.certPEM()},
		{c.peerCertFile, peer.certPEM},
		{c.peerKeyFile, peer.keyPEM},
	} {
		if err := writePrivate(f.path, f.pem); err != nil {
			return nil, err
		}
	}
	pair, err := tls.X509KeyPair(client.certPEM, client.keyPEM)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd client certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(clientCA.cert)
	c.client = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      roots,
		Certificates: []tls.Certificate{pair},
		ServerName:   embeddedHost.String(),
	}
	return c, nil
}

// writePrivate writes b to a new file readable by its owner only. An older
// file is removed first: os.WriteFile would keep its mode.
func writePrivate(path string, b []byte) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

type credCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

type credLeaf struct {
	certPEM, keyPEM []byte
}

// credValidity outlives any run of a server: the credentials are replaced
// at every start, and a store that stops answering because a certificate
// expired under a long-running server would be worse than a long lifetime
// for keys that die with the process.
const credValidity = 10 * 365 * 24 * time.Hour

func newCredCA(name string, now time.Time) (*credCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("%s key: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          credSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(credValidity),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &credCA{cert: cert, key: key}, nil
}

func (ca *credCA) certPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

func (ca *credCA) issue(name string, usage []x509.ExtKeyUsage, now time.Time) (*credLeaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("%s key: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: credSerial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(credValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		// etcd checks a client certificate's IP SANs against the address
		// it connects from; every party here is on loopback.
		IPAddresses: []net.IP{embeddedHost},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("%s key: %w", name, err)
	}
	return &credLeaf{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

func credSerial() *big.Int {
	// 128 random bits; rand.Int cannot fail on crypto/rand's reader.
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	return n
}
