//go:build linux

package integration

import (
	"os"
	"strings"
	"testing"
)

// The API's serving certificate names the server's host name and its
// --advertise names, and the same CA signs edge certificates for any
// name an admin lists in a Service: a service whose dnsNames hold the
// server's host name (here a single label, which the name rules allow)
// or an advertised name gets a certificate for it. The CLI and proxies
// also require the server's SPIFFE ID and refuse it, but whatever checks
// the API by name and ca.pem (curl --cacert, a Prometheus scraping
// /metrics) takes that service for the API. A name the server serves
// under should not be an edge name.
func TestReviewEdgeNameClaimsServerName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		t.Skip("no host name")
	}
	s := startServer(t, "--advertise", "trellis-api.example.test")
	for _, n := range []string{strings.ToLower(host), "trellis-api.example.test"} {
		f := t.TempDir() + "/svc.yaml"
		writeFile(f, "kind: Service\nname: shop\nspec: {dnsNames: ['"+n+"']}\n")
		if out, code := s.cli(t, "apply", "-f", f); code == 0 {
			t.Errorf("a Service may claim the server's own name %q: %s", n, out)
		}
	}
}
