package cli

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/trellis-mesh/trellis/internal/sidecar"
)

// runReady asks a proxy's admin endpoint whether it is ready: the
// container health check of injected sidecars, which have no shell or curl.
func runReady(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "ready", "ready [--admin-port PORT]")
	port := fs.Int("admin-port", sidecar.DefaultAdminPort, "the proxy's admin port on 127.0.0.1 (trellis proxy's and trellis gateway's default)")
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for the answer")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(*port)+"/ready", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("not ready: %s", resp.Status)
	}
	return nil
}
