package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/trellis-mesh/trellis/client"
)

// Context is what `trellis up` leaves for other terminals: where its server
// is and which files hold its CA and admin token (never the token itself).
type Context struct {
	Addr      string `json:"addr"`
	CAFile    string `json:"caFile"`
	TokenFile string `json:"tokenFile"`
	PID       int    `json:"pid"`
}

// ContextFile is where `trellis up` writes its Context.
func ContextFile() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(".trellis", "context.json")
	}
	return filepath.Join(home, ".trellis", "context.json")
}

// connect builds an API client from TRELLIS_ADDR, TRELLIS_TOKEN and
// TRELLIS_CACERT, falling back to a running `trellis up`.
func connect(e *env) (*client.Client, error) {
	addr, token, caFile := e.getenv("TRELLIS_ADDR"), e.getenv("TRELLIS_TOKEN"), e.getenv("TRELLIS_CACERT")
	e.serverFrom = "TRELLIS_ADDR"
	if addr == "" || token == "" || caFile == "" {
		if b, err := os.ReadFile(ContextFile()); err == nil {
			var c Context
			if err := json.Unmarshal(b, &c); err != nil {
				return nil, fmt.Errorf("%s: %w", ContextFile(), err)
			}
			if addr == "" {
				addr = c.Addr
				e.serverFrom = ContextFile() + ", which trellis up writes"
				if c.PID > 0 && !processAlive(c.PID) {
					e.serverFrom = fmt.Sprintf("%s, left by a trellis up (pid %d) that is no longer running; remove it", ContextFile(), c.PID)
				}
			}
			if caFile == "" {
				caFile = c.CAFile
			}
			if token == "" && c.TokenFile != "" {
				t, err := os.ReadFile(c.TokenFile)
				if err != nil {
					return nil, fmt.Errorf("admin token of trellis up: %w", err)
				}
				token = strings.TrimSpace(string(t))
			}
		}
	}
	if addr == "" {
		return nil, errors.New("no server: set TRELLIS_ADDR (and TRELLIS_TOKEN, TRELLIS_CACERT), or start one with trellis up")
	}
	if token == "" {
		return nil, errors.New("no token: set TRELLIS_TOKEN")
	}
	var caPEM []byte
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("TRELLIS_CACERT: %w", err)
		}
		caPEM = b
	}
	var warned sync.Once
	stale := func(w string) {
		warned.Do(func() { fmt.Fprintf(e.stderr, "trellis: warning: the server says: %s\n", w) })
	}
	e.server = addr
	return client.New(client.Config{Addr: addr, Token: token, CAPEM: caPEM, OnStale: stale})
}

// unreachable rewrites err, when it is a failure to connect to the
// server, as what happened and what to do; other errors are returned as
// they are.
func (e *env) unreachable(err error) error {
	var op *net.OpError
	if e.server == "" || !errors.As(err, &op) || op.Op != "dial" {
		return err
	}
	return fmt.Errorf("cannot reach the control plane at %s (from %s): %v; start one with `trellis up` (or `trellis server`), or point TRELLIS_ADDR at a running one", e.server, e.serverFrom, op.Err)
}
