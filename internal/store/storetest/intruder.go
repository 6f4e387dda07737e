package storetest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Intrude tries to use an etcd API at addr ("host:port", or a unix socket
// path) the way a local process holding none of the server's credentials
// would: with a plaintext client, and with a TLS client that accepts any
// server certificate but has none of its own to show. Each tries to write
// key = value and to read the whole keyspace. It returns what worked, such
// as "plaintext: read"; nothing means addr refused every attempt.
func Intrude(ctx context.Context, addr, key, value string) []string {
	var got []string
	for _, how := range []struct {
		name string
		tls  *tls.Config
	}{
		{"plaintext", nil},
		{"TLS without a client certificate", &tls.Config{InsecureSkipVerify: true}},
	} {
		ep := endpointURL(addr, how.tls != nil)
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{ep},
			TLS:         how.tls,
			DialTimeout: 2 * time.Second,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			continue
		}
		octx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if _, err := c.Put(octx, key, value); err == nil {
			got = append(got, how.name+": write "+key)
		}
		if r, err := c.Get(octx, "\x00", clientv3.WithFromKey(), clientv3.WithKeysOnly()); err == nil {
			got = append(got, fmt.Sprintf("%s: read (%d keys)", how.name, r.Count))
		}
		cancel()
		c.Close()
	}
	return got
}

// IntrudeHTTP asks addr for etcd's HTTP endpoints (version, health, the
// peer API's members and raft paths) over plaintext and over TLS without a
// client certificate, and returns every answer it got: any HTTP response at
// all means an unauthenticated process reached etcd's handlers.
func IntrudeHTTP(ctx context.Context, addr string) []string {
	var got []string
	host, dial := addr, (func(context.Context, string, string) (net.Conn, error))(nil)
	if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "@") {
		host = "localhost"
		dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}
	}
	for _, secure := range []bool{false, true} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true, DialContext: dial}
		cl := &http.Client{Transport: tr, Timeout: 3 * time.Second}
		scheme := "http"
		if secure {
			scheme = "https"
		}
		for _, path := range []string{"/version", "/health", "/members", "/raft/probing", "/metrics"} {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+host+path, nil)
			resp, err := cl.Do(req)
			if err != nil {
				continue
			}
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
			resp.Body.Close()
			got = append(got, fmt.Sprintf("GET %s://%s%s: %s %q", scheme, host, path, resp.Status, b))
		}
		tr.CloseIdleConnections()
	}
	return got
}

func endpointURL(addr string, secure bool) string {
	if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "@") {
		if secure {
			return "unixs://" + addr
		}
		return "unix://" + addr
	}
	if secure {
		return "https://" + addr
	}
	return "http://" + addr
}
