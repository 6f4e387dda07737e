package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// ClientTLS returns the TLS configuration to reach an etcd cluster from PEM
// files: caFile holds the CAs that sign etcd's serving certificates (empty
// means the system's roots); certFile and keyFile, both or neither, are the
// client certificate etcd asks for when it runs with --client-cert-auth.
//
// The files are read now, so that a bad one stops the server at start. The
// client certificate is read again at each handshake where the files
// changed, so that a renewed certificate is used on the next connection
// without a restart; a pair that fails to load keeps the last good one.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("etcd CA file %s: no PEM certificate in it", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("etcd client certificate and key: give both or neither")
	}
	if certFile != "" {
		kp := &keyPairFiles{certFile: certFile, keyFile: keyFile}
		if _, err := kp.reload(); err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp.get(), nil }
	}
	return cfg, nil
}

// keyPairFiles is a certificate and key read from files, again whenever
// their size or modification time changes.
type keyPairFiles struct {
	certFile, keyFile string

	mu    sync.Mutex // guards the fields below
	cur   *tls.Certificate
	stamp string
}

// get returns the current pair, reloading it first if the files changed.
func (k *keyPairFiles) get() *tls.Certificate {
	cur, _ := k.reload()
	return cur
}

// reload loads the pair if the files changed since the last good load, and
// returns the pair in effect with the load's error, if any.
func (k *keyPairFiles) reload() (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	stamp := fileStamp(k.certFile) + "|" + fileStamp(k.keyFile)
	if k.cur != nil && stamp == k.stamp {
		return k.cur, nil
	}
	pair, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		return k.cur, fmt.Errorf("etcd client certificate %s with key %s: %w", k.certFile, k.keyFile, err)
	}
	k.cur, k.stamp = &pair, stamp
	return k.cur, nil
}

func fileStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%d/%d", fi.Size(), fi.ModTime().UnixNano())
}

// shownEndpoint is ep as an error may show it: quoted, unless it holds an
// @, which may end a password however the rest parses (":pw@h", or
// "x:pw@h", which parses as an opaque URL with no user at all).
func shownEndpoint(ep string) string {
	if strings.Contains(ep, "@") {
		return "(one with an @, not shown: it may hold a password)"
	}
	return strconv.Quote(ep)
}

// shownEndpoints is a list of endpoints as shownEndpoint shows each.
func shownEndpoints(eps []string) string {
	shown := make([]string, len(eps))
	for i, ep := range eps {
		shown[i] = shownEndpoint(ep)
	}
	return "[" + strings.Join(shown, " ") + "]"
}

// validate checks the endpoints' URLs and that TLS and authentication are
// given in ways that can work, naming the endpoint at fault.
func (cfg *EtcdConfig) validate() error {
	if len(cfg.Endpoints) == 0 {
		return errors.New("etcd: no endpoints")
	}
	var errs []error
	secure := 0
	for i, ep := range cfg.Endpoints {
		u, err := url.Parse(ep)
		if err != nil {
			// url's error repeats the URL, which may hold a password.
			errs = append(errs, fmt.Errorf("etcd endpoint %d: not a URL", i+1))
			continue
		}
		if u.User != nil {
			errs = append(errs, fmt.Errorf("etcd endpoint %q: no user:password@ in the URL (ps would show it); log in with a username and a password file", u.Redacted()))
			continue
		}
		switch u.Scheme {
		case "https":
			secure++
		case "http":
		default:
			errs = append(errs, fmt.Errorf("etcd endpoint %s: want an http:// or https:// URL", shownEndpoint(ep)))
			continue
		}
		if _, _, err := net.SplitHostPort(u.Host); err != nil || u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
			errs = append(errs, fmt.Errorf("etcd endpoint %s: want scheme://host:port", shownEndpoint(ep)))
		}
	}
	if secure != 0 && secure != len(cfg.Endpoints) {
		errs = append(errs, fmt.Errorf("etcd endpoints %s: mix http:// and https://; use https:// for all", shownEndpoints(cfg.Endpoints)))
	}
	if cfg.TLS != nil && secure == 0 {
		errs = append(errs, fmt.Errorf("etcd endpoints %s: TLS is configured, but the URLs are http://; use https://", shownEndpoints(cfg.Endpoints)))
	}
	if (cfg.Username == "") != (cfg.Password == "") {
		errs = append(errs, errors.New("etcd username and password: give both or neither"))
	}
	return errors.Join(errs...)
}

// explain turns a failure to reach etcd into an error that says what to
// change: etcd's authentication errors become plain words, and where the
// client only saw a timeout, a TLS handshake with each endpoint tells why.
func (cfg *EtcdConfig) explain(ctx context.Context, err error) error {
	eps := cfg.Endpoints
	switch {
	case errors.Is(err, rpctypes.ErrUserEmpty):
		return fmt.Errorf("etcd %v requires authentication: give an etcd username and password, or a client certificate whose common name is an etcd user: %w", eps, err)
	case errors.Is(err, rpctypes.ErrAuthFailed):
		return fmt.Errorf("etcd %v: user %q: wrong username or password: %w", eps, cfg.Username, err)
	case errors.Is(err, rpctypes.ErrPermissionDenied) && cfg.Username == "" && clientCN(cfg.TLS) != "":
		// Without a login, etcd takes the client certificate's CN as the user.
		return fmt.Errorf("etcd %v: user %q, the client certificate's common name, may not use keys under %s: grant it a role with readwrite on that prefix, or log in as another user: %w", eps, clientCN(cfg.TLS), cfg.Prefix, err)
	case errors.Is(err, rpctypes.ErrPermissionDenied):
		return fmt.Errorf("etcd %v: user %q may not use keys under %s: grant it a role with readwrite on that prefix: %w", eps, cfg.Username, cfg.Prefix, err)
	case errors.Is(err, rpctypes.ErrAuthNotEnabled):
		return fmt.Errorf("etcd %v: a username was given but authentication is not enabled on this etcd: %w", eps, err)
	}
	for _, ep := range eps {
		why := probePlain(ctx, ep)
		if cfg.TLS != nil {
			why = probeTLS(ctx, ep, cfg.TLS)
		}
		if why != nil {
			return fmt.Errorf("etcd %s: %w (the client saw: %w)", ep, why, err)
		}
	}
	return fmt.Errorf("etcd %v: %w", eps, err)
}

// clientCN is the common name of the client certificate in c, if any.
func clientCN(c *tls.Config) string {
	if c == nil {
		return ""
	}
	cert := (*tls.Certificate)(nil)
	if len(c.Certificates) > 0 {
		cert = &c.Certificates[0]
	} else if c.GetClientCertificate != nil {
		cert, _ = c.GetClientCertificate(&tls.CertificateRequestInfo{})
	}
	if cert == nil || cert.Leaf == nil {
		return ""
	}
	return cert.Leaf.Subject.CommonName
}

// h2Preface is the HTTP/2 client preface and an empty SETTINGS frame: a
// gRPC server that accepted the connection answers with its own SETTINGS.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"

// probePlain tells whether an http endpoint is in fact a TLS server: it
// answers a TLS handshake (trusting any certificate, since nothing is
// sent over it), with a certificate or at least a TLS alert.
func probePlain(ctx context.Context, endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "http" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}}
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err == nil {
		c.Close()
	}
	if err == nil || strings.Contains(err.Error(), "remote error: tls:") {
		return errors.New("the server speaks TLS: use an https:// URL")
	}
	return nil
}

// probeTLS opens a TLS connection to an https endpoint as the client would
// and returns why it fails, or nil when it does not. With TLS 1.3 a server
// refuses a client certificate only after the client's handshake is done,
// so the probe also waits briefly for that refusal.
func probeTLS(ctx context.Context, endpoint string, base *tls.Config) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "https" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	cfg := base.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	cfg.NextProtos = []string{"h2"}
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return fmt.Errorf("TLS connection: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte(h2Preface)); err != nil {
		return fmt.Errorf("TLS connection: %w", err)
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		if len(cfg.Certificates) == 0 && cfg.GetClientCertificate == nil {
			return fmt.Errorf("TLS connection refused by etcd, perhaps because it wants a client certificate and none is configured: %w", err)
		}
		return fmt.Errorf("TLS connection refused by etcd: %w", err)
	}
	return nil
}
