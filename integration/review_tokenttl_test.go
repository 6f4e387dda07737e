//go:build linux

package integration

import (
	"strings"
	"testing"
	"time"
)

// A token made to last 15 s obtains a certificate that lasts the full
// SVID TTL (24 h): its holder stays a mesh identity long after the token
// is gone, and deleting the token cannot end that either. The CA should
// cut an SVID (and edge certificate) at its token's expiry.
func TestReviewSVIDOutlivesTokenTTL(t *testing.T) {
	s := startServer(t)
	secret := strings.TrimSpace(s.mustCLI(t, "token", "create", "--service", "web", "--ttl", "15s"))
	signed, err := clientFor(t, s, secret).Sign(t.Context(), "web", csrPEM(t))
	if err != nil {
		t.Fatal(err)
	}
	if limit := time.Now().Add(16 * time.Second); signed.ExpiresAt.After(limit) {
		t.Errorf("a token expiring in 15s got an SVID valid until %s (%s from now)", signed.ExpiresAt.Format(time.RFC3339), time.Until(signed.ExpiresAt).Round(time.Minute))
	}
}
