// Package health checks that an app answers: a TCP connect, or an HTTP GET
// that must return 2xx or 3xx. A sidecar runs one Checker for its app and
// reports changes to the control plane.
package health

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Checker checks one app. The zero value of a duration field means its
// default.
type Checker struct {
	// Addr is the app's host:port.
	Addr string
	// HTTPPath, when set, makes the check an HTTP GET of this path;
	// otherwise it is a TCP connect.
	HTTPPath string
	// Interval between checks; default 1s.
	Interval time.Duration
	// Timeout of one check; default 1s.
	Timeout time.Duration
	// FailuresToUnhealthy consecutive failures mark the app unhealthy;
	// default 2. One success marks it healthy.
	FailuresToUnhealthy int

	// tr is made once: a check runs every Interval for the life of a proxy.
	// No keep-alive, so that every check proves the app still accepts.
	tr *http.Transport
}

func (c *Checker) defaults() {
	if c.Interval == 0 {
		c.Interval = time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = time.Second
	}
	if c.FailuresToUnhealthy == 0 {
		c.FailuresToUnhealthy = 2
	}
	if c.tr == nil {
		c.tr = &http.Transport{DisableKeepAlives: true}
	}
}

// Check runs one check. A Checker is used by one goroutine at a time.
func (c *Checker) Check(ctx context.Context) error {
	c.defaults()
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	if c.HTTPPath == "" {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", c.Addr)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.Addr+c.HTTPPath, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "trellis-health")
	resp, err := c.tr.RoundTrip(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return fmt.Errorf("GET %s: status %d", c.HTTPPath, resp.StatusCode)
	}
	return nil
}

// Run checks until ctx ends and calls report with the first result and on
// every change of health. report runs on Run's goroutine.
func (c *Checker) Run(ctx context.Context, report func(healthy bool, err error)) {
	c.defaults()
	t := time.NewTicker(c.Interval)
	defer t.Stop()
	first := true
	healthy := false
	failures := 0
	for {
		err := c.Check(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			failures = 0
			if !healthy || first {
				healthy = true
				report(true, nil)
			}
		default:
			failures++
			if first || healthy && failures >= c.FailuresToUnhealthy {
				healthy = false
				report(false, err)
			}
		}
		first = false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
