package l7

import (
	"net/http"
	"net/http/httptest"
	"testing"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// The ingress replaces X-Forwarded-For with the client's address, but a
// client's X_Forwarded_For travels on beside it; CGI-style servers (WSGI,
// Rack, PHP) read both as HTTP_X_FORWARDED_FOR, so the app logs, rate
// limits or allowlists the address the client chose (the class of Puma's
// CVE-2024-45614). The same holds for the peer header at the inbound.
func TestReviewIngressForwardedForUnderscore(t *testing.T) {
	var got http.Header
	g := &Ingress{
		Name:   "gw:8000",
		Routes: func() []v1.GatewayRoute { return []v1.GatewayRoute{{PathPrefix: "/", Service: "web"}} },
		Upstream: func(string) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r.Header.Clone() })
		},
	}
	req := httptest.NewRequest("GET", "http://web/x", nil)
	req.RemoteAddr = "192.0.2.7:4711"
	req.Header["X_Forwarded_For"] = []string{"127.0.0.1"}
	g.ServeHTTP(httptest.NewRecorder(), req)
	if got == nil {
		t.Fatal("request not passed on")
	}
	for k, v := range got {
		if k != "X-Forwarded-For" && normalizeFieldName(k) == "x-forwarded-for" {
			t.Errorf("the service got %s: %v beside X-Forwarded-For: %v", k, v, got["X-Forwarded-For"])
		}
	}
}
