// Package client is the Go client of the Trellis control plane's HTTP API,
// used by the CLI and by proxies to obtain certificates. Its types mirror
// the API's JSON.
package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/identity"
)

// Config says where the server is and how to trust and authenticate to it.
type Config struct {
	// Addr is host:port or an https:// URL, or a comma-separated list of
	// them (see ParseServers): requests go to the server that last
	// answered, and to the next one when it cannot be reached.
	Addr string
	// Token is the bearer token sent with every request.
	Token string
	// CAPEM are the roots that verify the server's certificate (the mesh CA).
	CAPEM []byte
	// ExtraRoots, when set, is asked at every handshake for more roots to
	// accept beside CAPEM: a proxy passes the trust bundle of its latest
	// snapshot, so that it still reaches the server after the CA rotates.
	ExtraRoots func() []byte
	// Timeout bounds each request; zero means 30s.
	Timeout time.Duration
	// OnStale, when set, is called with the server's warning whenever an
	// answer may be stale: the server's view of its store is behind (its
	// watch is down, or the store did not answer for seconds).
	OnStale func(warning string)
}

// Client talks to the control plane: one server of its list at a time.
type Client struct {
	// servers are the list's host:port entries; cur indexes the one
	// requests go to first (the last that answered, or Prefer's).
	servers []string
	cur     atomic.Int32
	token   string
	hc      *http.Client
	// tls is never handed to the transport (which adjusts its own copy on
	// first use), so that TLSConfig can clone it while requests run.
	tls     *tls.Config
	onStale func(string)
}

// New builds a client. It does not connect.
func New(cfg Config) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("no server address (set TRELLIS_ADDR or --server)")
	}
	servers, err := ParseServers(cfg.Addr)
	if err != nil {
		return nil, err
	}
	if len(cfg.CAPEM) > 0 && !x509.NewCertPool().AppendCertsFromPEM(cfg.CAPEM) {
		return nil, errors.New("server CA: no PEM certificate")
	}
	tlsCfg := serverTLS(cfg.CAPEM, cfg.ExtraRoots)
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg.Clone(), ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 4}
	return &Client{servers: servers, token: cfg.Token, hc: &http.Client{Transport: tr, Timeout: cfg.Timeout}, tls: tlsCfg, onStale: cfg.OnStale}, nil
}

// TLSConfig returns the TLS settings used to reach the servers, for a gRPC
// connection to one of them. Its ServerName is empty: the dialer sets it to
// the host of the entry it dials (a DNS name, also when it dials one of
// the name's addresses), which the server's certificate must name.
func (c *Client) TLSConfig() *tls.Config {
	return c.tls.Clone()
}

// CloseIdleConnections closes the connections kept for the next request,
// and the goroutines that serve them: a program that is done with the
// client calls it (requests made later open new ones).
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// Host returns the host:port requests go to first: the server that last
// answered, or the one Prefer named.
func (c *Client) Host() string { return c.servers[c.cur.Load()] }

// Servers returns the list's host:port entries, in the order given.
func (c *Client) Servers() []string { return slices.Clone(c.servers) }

// Prefer makes requests go first to server, one of Servers (a proxy
// passes the one its stream is on); another value is ignored.
func (c *Client) Prefer(server string) {
	if i := slices.Index(c.servers, server); i >= 0 {
		c.cur.Store(int32(i))
	}
}

// Error is an error answer from the API.
type Error struct {
	Status  int
	Message string
	// Outcome, for a write, is "not-applied" (it never will be) or
	// "unknown" (the store did not answer in time: it may still apply;
	// retrying with WriteKey is safe); empty for other answers.
	Outcome, WriteKey string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

// IsNotFound reports whether err is a 404 from the API.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// Write answers of unknown outcome are retried with the same idempotency
// key, which the server applies at most once, this many times, this far
// apart: a store that was away for a moment then gives a definite answer.
const (
	unknownRetries = 2
	unknownPause   = time.Second
)

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var b []byte
	if in != nil {
		var err error
		if b, err = json.Marshal(in); err != nil {
			return err
		}
	}
	var key string
	if method != http.MethodGet && method != http.MethodHead {
		k := make([]byte, 18)
		if _, err := rand.Read(k); err != nil {
			return err
		}
		key = base64.RawURLEncoding.EncodeToString(k)
	}
	for try := 0; ; try++ {
		err := c.once(ctx, method, path, key, b, out)
		var e *Error
		if try == unknownRetries || !errors.As(err, &e) || e.Outcome != "unknown" {
			return err
		}
		t := time.NewTimer(unknownPause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// once makes one request (key, when set, is its idempotency key): to the
// current server and, when that one cannot take it, to the next ones of
// the list in turn; the first that answers becomes the current one.
// "Cannot take it" is a failed dial for any request (nothing was sent),
// and any transport failure or a 503 for a GET (which changes nothing, so
// sending it again is safe).
func (c *Client) once(ctx context.Context, method, path, key string, body []byte, out any) error {
	first := int(c.cur.Load())
	var errs []error
	for k := range c.servers {
		i := (first + k) % len(c.servers)
		err := c.doOn(ctx, c.servers[i], method, path, key, body != nil, body, out)
		if err == nil || !c.nextMayTake(method, err) {
			c.cur.Store(int32(i)) // it answered
			return err
		}
		if len(c.servers) == 1 {
			return err
		}
		errs = append(errs, fmt.Errorf("server %s: %w", c.servers[i], err))
		if ctx.Err() != nil {
			break
		}
	}
	return errors.Join(errs...)
}

// nextMayTake reports whether a request that failed with err may be sent
// to another server.
func (c *Client) nextMayTake(method string, err error) bool {
	var ae *Error
	if errors.As(err, &ae) {
		return method == http.MethodGet && ae.Status == http.StatusServiceUnavailable
	}
	if method == http.MethodGet {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// doOn sends one request to server.
func (c *Client) doOn(ctx context.Context, server, method, path, key string, hasBody bool, body []byte, out any) error {
	// path comes with its segments escaped (url.PathEscape): RawPath
	// keeps them so, and Path must hold the same path unescaped, or
	// URL.String would escape the escapes again ("*" -> %2A -> %252A).
	u := url.URL{Scheme: "https", Host: server}
	raw, query, _ := strings.Cut(path, "?")
	unescaped, err := url.PathUnescape(raw)
	if err != nil {
		return fmt.Errorf("request path %q: %w", raw, err)
	}
	u.Path, u.RawPath, u.RawQuery = unescaped, raw, query
	var rd io.Reader
	if hasBody {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if w := resp.Header.Get("Trellis-Stale"); w != "" && c.onStale != nil {
		c.onStale(w)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error    string `json:"error"`
			Outcome  string `json:"outcome"`
			WriteKey string `json:"writeKey"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &Error{Status: resp.StatusCode, Message: e.Error, Outcome: e.Outcome, WriteKey: e.WriteKey}
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// Backup streams a snapshot of the server's store (an etcd snapshot) to
// w. Admin only.
func (c *Client) Backup(ctx context.Context, w io.Writer) (int64, error) {
	u := url.URL{Scheme: "https", Host: c.Host(), Path: "/v1/backup"}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	// The snapshot may take longer than the client's request timeout: ctx
	// bounds it.
	hc := *c.hc
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return 0, &Error{Status: resp.StatusCode, Message: e.Error}
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("backup cut short after %d bytes: %w", n, err)
	}
	return n, nil
}

// Apply stores resources atomically: all or none.
func (c *Client) Apply(ctx context.Context, res []v1.Resource) ([]string, error) {
	var out v1.ApplyResult
	err := c.do(ctx, http.MethodPost, "/v1/resources", res, &out)
	return out.Applied, err
}

// List returns every resource of kind.
func (c *Client) List(ctx context.Context, kind string) ([]v1.Resource, error) {
	var out []v1.Resource
	err := c.do(ctx, http.MethodGet, "/v1/resources/"+url.PathEscape(kind), nil, &out)
	return out, err
}

// Get returns one resource.
func (c *Client) Get(ctx context.Context, kind, name string) (v1.Resource, error) {
	var out v1.Resource
	err := c.do(ctx, http.MethodGet, "/v1/resources/"+url.PathEscape(kind)+"/"+url.PathEscape(name), nil, &out)
	return out, err
}

// Canary returns the status of a Route's canary; IsNotFound when the
// Route has none.
func (c *Client) Canary(ctx context.Context, route string) (v1.CanaryStatus, error) {
	var out v1.CanaryStatus
	err := c.do(ctx, http.MethodGet, "/v1/routes/"+url.PathEscape(route)+"/canary", nil, &out)
	return out, err
}

// Delete removes one resource.
func (c *Client) Delete(ctx context.Context, kind, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/resources/"+url.PathEscape(kind)+"/"+url.PathEscape(name), nil, nil)
}

// Services lists declared and registered services.
func (c *Client) Services(ctx context.Context) ([]v1.ServiceSummary, error) {
	var out []v1.ServiceSummary
	err := c.do(ctx, http.MethodGet, "/v1/services", nil, &out)
	return out, err
}

// Instances lists registered instances, of one service or (empty) all.
func (c *Client) Instances(ctx context.Context, service string) ([]v1.Instance, error) {
	var out []v1.Instance
	p := "/v1/instances"
	if service != "" {
		p += "?service=" + url.QueryEscape(service)
	}
	err := c.do(ctx, http.MethodGet, p, nil, &out)
	return out, err
}

// Proxies lists connected proxies and their snapshot versions.
func (c *Client) Proxies(ctx context.Context) ([]v1.ProxyStatus, error) {
	var out []v1.ProxyStatus
	err := c.do(ctx, http.MethodGet, "/v1/proxies", nil, &out)
	return out, err
}

// Stats returns the mesh's traffic figures over window (zero: the
// server's default, 1m), of one service and its edges or (empty) all.
func (c *Client) Stats(ctx context.Context, window time.Duration, service string) (v1.Stats, error) {
	var out v1.Stats
	err := c.do(ctx, http.MethodGet, "/v1/stats"+statsParams(window, service), nil, &out)
	return out, err
}

// Topology returns the mesh's services and edges with their traffic
// figures over window (zero: 1m), of one service or (empty) all.
func (c *Client) Topology(ctx context.Context, window time.Duration, service string) (v1.Topology, error) {
	var out v1.Topology
	err := c.do(ctx, http.MethodGet, "/v1/topology"+statsParams(window, service), nil, &out)
	return out, err
}

func statsParams(window time.Duration, service string) string {
	q := url.Values{}
	if window != 0 {
		q.Set("window", window.String())
	}
	if service != "" {
		q.Set("service", service)
	}
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

// Roots returns the trust bundle.
func (c *Client) Roots(ctx context.Context) (v1.Roots, error) {
	var out v1.Roots
	err := c.do(ctx, http.MethodGet, "/v1/ca/roots", nil, &out)
	return out, err
}

// AddRoots adds PEM roots to the mesh's trust bundle.
func (c *Client) AddRoots(ctx context.Context, rootsPEM []byte) error {
	return c.do(ctx, http.MethodPost, "/v1/ca/roots", v1.Roots{RootsPEM: string(rootsPEM)}, nil)
}

// RemoveRoot takes a root out of the trust bundle.
func (c *Client) RemoveRoot(ctx context.Context, req v1.RemoveRootRequest) (v1.Roots, error) {
	var out v1.Roots
	err := c.do(ctx, http.MethodPost, "/v1/ca/roots/remove", req, &out)
	return out, err
}

// Rotation says where the root rotation stands.
func (c *Client) Rotation(ctx context.Context) (v1.Rotation, error) {
	var out v1.Rotation
	err := c.do(ctx, http.MethodGet, "/v1/ca/rotation", nil, &out)
	return out, err
}

// Rotate runs one step of a root rotation.
func (c *Client) Rotate(ctx context.Context, req v1.RotationRequest) (v1.Rotation, error) {
	var out v1.Rotation
	err := c.do(ctx, http.MethodPost, "/v1/ca/rotation", req, &out)
	return out, err
}

// Sign asks the CA to sign csrPEM for service.
func (c *Client) Sign(ctx context.Context, service string, csrPEM []byte) (v1.Signed, error) {
	var out v1.Signed
	err := c.do(ctx, http.MethodPost, "/v1/ca/sign", v1.SignRequest{Service: service, CSR: string(csrPEM)}, &out)
	return out, err
}

// CreateToken makes a token for services (or an admin token).
func (c *Client) CreateToken(ctx context.Context, req v1.TokenRequest) (v1.NewToken, error) {
	var out v1.NewToken
	err := c.do(ctx, http.MethodPost, "/v1/tokens", req, &out)
	return out, err
}

// Tokens lists tokens (never their secrets).
func (c *Client) Tokens(ctx context.Context) ([]v1.Token, error) {
	var out []v1.Token
	err := c.do(ctx, http.MethodGet, "/v1/tokens", nil, &out)
	return out, err
}

// DeleteToken revokes a token by its ID.
func (c *Client) DeleteToken(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(id), nil, nil)
}

// serverTLS returns the TLS settings that authenticate the control plane:
// a chain to the fixed roots (the system's when there are none), plus
// whatever extra() returns at handshake time, for the dialed host name,
// and the server's SPIFFE ID. The ID is what makes it the API: the same CA
// signs workload SVIDs (spiffe://<td>/svc/...) and edge certificates for
// names an admin allows, so a name alone could be a service's. The
// standard verification is switched off only to be done here instead,
// host name included.
func serverTLS(fixed []byte, extra func() []byte) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			var roots *x509.CertPool
			if len(fixed) > 0 || extra != nil {
				roots = x509.NewCertPool()
				roots.AppendCertsFromPEM(fixed)
				if extra != nil {
					roots.AppendCertsFromPEM(extra())
				}
			}
			return VerifyServer(cs.PeerCertificates, cs.ServerName, roots)
		},
	}
}

// VerifyServer checks that chain (leaf first) is the control plane's: it
// verifies to roots (nil: the system's) for serverName, for server
// authentication, and its leaf's only URI SAN is a server ID,
// spiffe://<trust-domain>/trellis/server.
func VerifyServer(chain []*x509.Certificate, serverName string, roots *x509.CertPool) error {
	if len(chain) == 0 {
		return errors.New("server presented no certificate")
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		DNSName: serverName, Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return err
	}
	if err := checkServerID(leaf); err != nil {
		return fmt.Errorf("not the Trellis control plane: %w", err)
	}
	return nil
}

// checkServerID requires the leaf's one URI SAN to be a server ID,
// spiffe://<trust-domain>/trellis/server, read from the certificate's
// signed bytes and parsed by the SPIFFE ID rules as every mesh peer's ID
// is (identity.SPIFFEIDFromCertificate): url.URL would drop an empty
// fragment or query and lowercase the scheme.
func checkServerID(leaf *x509.Certificate) error {
	id, err := identity.SPIFFEIDFromCertificate(leaf)
	if err != nil {
		return fmt.Errorf("not a control plane (spiffe://<trust-domain>%s): %w", v1.ServerIDPath, err)
	}
	if id.Path() != v1.ServerIDPath {
		return fmt.Errorf("certificate is for %s, not a control plane (spiffe://<trust-domain>%s)", id, v1.ServerIDPath)
	}
	return nil
}

// SignEdge has the mesh CA sign an edge certificate of service for names:
// a server certificate for clients outside the mesh, which the Service
// (or the service's Gateway) must allow.
func (c *Client) SignEdge(ctx context.Context, service string, csrPEM []byte, names []string) (v1.Signed, error) {
	var out v1.Signed
	err := c.do(ctx, http.MethodPost, "/v1/ca/sign", v1.SignRequest{Service: service, CSR: string(csrPEM), DNSNames: names}, &out)
	return out, err
}
