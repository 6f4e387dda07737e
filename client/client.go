// Package client is the Go client of the Trellis control plane's HTTP API,
// used by the CLI and by proxies to obtain certificates. Its types mirror
// the API's JSON.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Config says where the server is and how to trust and authenticate to it.
type Config struct {
	// Addr is host:port or an https:// URL.
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
}

// Client talks to one control plane server.
type Client struct {
	base  *url.URL
	token string
	hc    *http.Client
	// tls is never handed to the transport (which adjusts its own copy on
	// first use), so that TLSConfig can clone it while requests run.
	tls *tls.Config
}

// New builds a client. It does not connect.
func New(cfg Config) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("no server address (set TRELLIS_ADDR or --server)")
	}
	raw := cfg.Addr
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("server address %q: %w", cfg.Addr, err)
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("server address %q: the API is served over https only", cfg.Addr)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(cfg.CAPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CAPEM) {
			return nil, errors.New("server CA: no PEM certificate")
		}
		tlsCfg.RootCAs = pool
	}
	if cfg.ExtraRoots != nil {
		tlsCfg = dynamicRoots(tlsCfg, cfg.CAPEM, cfg.ExtraRoots)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg.Clone(), ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 4}
	return &Client{base: u, token: cfg.Token, hc: &http.Client{Transport: tr, Timeout: cfg.Timeout}, tls: tlsCfg}, nil
}

// TLSConfig returns the TLS settings used to reach the server, for a gRPC
// connection to the same address.
func (c *Client) TLSConfig() *tls.Config {
	return c.tls.Clone()
}

// Host returns the server's host:port.
func (c *Client) Host() string { return c.base.Host }

// Error is an error answer from the API.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

// IsNotFound reports whether err is a 404 from the API.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := *c.base
	u.Path, u.RawQuery, _ = strings.Cut(path, "?")
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &Error{Status: resp.StatusCode, Message: e.Error}
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
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

// Sign asks the CA to sign csrPEM for service.
func (c *Client) Sign(ctx context.Context, service string, csrPEM []byte) (v1.Signed, error) {
	var out v1.Signed
	err := c.do(ctx, http.MethodPost, "/v1/ca/sign", v1.SignRequest{Service: service, CSR: string(csrPEM)}, &out)
	return out, err
}

// CreateToken makes a token for services (or an admin token).
func (c *Client) CreateToken(ctx context.Context, services []string, admin bool, description string) (v1.NewToken, error) {
	var out v1.NewToken
	err := c.do(ctx, http.MethodPost, "/v1/tokens", v1.TokenRequest{Services: services, Admin: admin, Description: description}, &out)
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

// dynamicRoots returns a config that verifies the server against the fixed
// roots plus whatever extra() returns at handshake time. The standard
// verification is switched off only to be done here instead, hostname
// included.
func dynamicRoots(base *tls.Config, fixed []byte, extra func() []byte) *tls.Config {
	c := base.Clone()
	c.RootCAs = nil
	c.InsecureSkipVerify = true
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("server presented no certificate")
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(fixed)
		pool.AppendCertsFromPEM(extra())
		inter := x509.NewCertPool()
		for _, ic := range cs.PeerCertificates[1:] {
			inter.AddCert(ic)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			DNSName: cs.ServerName, Roots: pool, Intermediates: inter,
		})
		return err
	}
	return c
}

// SignEdge has the mesh CA sign an edge certificate of service for names:
// a server certificate for clients outside the mesh, which the Service
// (or the service's Gateway) must allow.
func (c *Client) SignEdge(ctx context.Context, service string, csrPEM []byte, names []string) (v1.Signed, error) {
	var out v1.Signed
	err := c.do(ctx, http.MethodPost, "/v1/ca/sign", v1.SignRequest{Service: service, CSR: string(csrPEM), DNSNames: names}, &out)
	return out, err
}
