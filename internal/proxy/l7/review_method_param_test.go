package l7

import (
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/httpmatch"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/trellistest"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// A deny on DELETE fits X-HTTP-Method-Override and its kin, but not the
// _method parameter that Rails (Rack::MethodOverride), Laravel and
// Symfony read from a POST's form body (Symfony and Laravel from the
// query too) and then route as DELETE: the app runs the DELETE that the
// intention denies.
func TestReviewMethodOverrideParameter(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	policy := authz.ForDestination("web", v1.Deny, sidestepPolicy)
	if err := policy.Compile(); err != nil {
		t.Fatal(err)
	}
	in := startInbound(t, ca, a, func(peer identity.ID, r *httpmatch.Request) authz.Decision {
		return policy.CheckRequest(peer.Service(), r)
	})
	url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in, Instance: "web-1"}))
	addr := strings.TrimPrefix(url, "http://")
	for _, tc := range []struct{ name, head string }{
		{"query", "POST /x?_method=DELETE HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n"},
		{"form body", "POST /x HTTP/1.1\r\nHost: web\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 14\r\n\r\n_method=delete"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := a.hits.Load()
			got := rawRequest(t, addr, tc.head)
			if a.hits.Load() != before {
				t.Errorf("got %d: a POST naming DELETE in _method reached the app past a deny on DELETE", got)
			}
		})
	}
}
