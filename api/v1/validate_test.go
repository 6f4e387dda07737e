package v1

import (
	"strings"
	"testing"
)

// TestValidateRefusesUnmatchable checks that apply refuses a permission or
// route match that no request could ever fit, naming the field.
func TestValidateRefusesUnmatchable(t *testing.T) {
	for _, tc := range []struct {
		name  string
		match RouteMatch
		field string // the field named in the error, after the match's path
	}{
		{"lowercase method", RouteMatch{Methods: []string{"get"}}, ".methods[0]"},
		{"unknown method", RouteMatch{Methods: []string{"GET", "PURGE"}}, ".methods[1]"},
		{"connect", RouteMatch{Methods: []string{"CONNECT"}}, ".methods[0]"},
		{"relative path", RouteMatch{PathPrefix: "admin/"}, ".pathPrefix"},
		{"relative regex", RouteMatch{PathRegex: "admin/.*"}, ".pathRegex"},
		{"double slash", RouteMatch{PathExact: "/a//b"}, ".pathExact"},
		{"dot segment", RouteMatch{PathPrefix: "/a/../b"}, ".pathPrefix"},
		{"trailing dot segment", RouteMatch{PathExact: "/a/."}, ".pathExact"},
		{"query", RouteMatch{PathExact: "/a?x=1"}, ".pathExact"},
		{"encoded", RouteMatch{PathPrefix: "/a%2Fb"}, ".pathPrefix"},
		{"backslash", RouteMatch{PathPrefix: `/a\b`}, ".pathPrefix"},
		{"pseudo-header", RouteMatch{Headers: []HeaderMatch{{Name: ":authority", Exact: "a"}}}, ".headers[0].name"},
		{"connection header", RouteMatch{Headers: []HeaderMatch{{Name: "Connection"}}}, ".headers[0].name"},
		{"peer header", RouteMatch{Headers: []HeaderMatch{{Name: "x-forwarded-client-cert", Prefix: "By="}}}, ".headers[0].name"},
		{"comma in a value", RouteMatch{Headers: []HeaderMatch{{Name: "x-role", Exact: "user, admin"}}}, ".headers[0].exact"},
		{"semicolon in a cookie", RouteMatch{Headers: []HeaderMatch{{Name: "cookie", Prefix: "a=1; b"}}}, ".headers[0].prefix"},
		{"white space around", RouteMatch{Headers: []HeaderMatch{{Name: "x-role", Exact: " admin"}}}, ".headers[0].exact"},
		{"control character", RouteMatch{Headers: []HeaderMatch{{Name: "x-role", Exact: "a\x01"}}}, ".headers[0].exact"},
		{"host with port", RouteMatch{Headers: []HeaderMatch{{Name: "host", Exact: "admin.internal:8080"}}}, ".headers[0].exact"},
		{"host wildcard", RouteMatch{Headers: []HeaderMatch{{Name: "Host", Exact: "*.internal"}}}, ".headers[0].exact"},
		{"host not a name", RouteMatch{Headers: []HeaderMatch{{Name: "host", Exact: "admin%2einternal"}}}, ".headers[0].exact"},
		{"host empty label", RouteMatch{Headers: []HeaderMatch{{Name: "host", Exact: "admin..internal"}}}, ".headers[0].exact"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Resource{Kind: KindIntention, Name: "web.api", Intention: &IntentionSpec{
				Source: "web", Destination: "api",
				Permissions: []IntentionPermission{{Action: Allow, HTTP: RouteMatch{PathPrefix: "/"}}, {Action: Deny, HTTP: tc.match}},
			}}
			err := r.Validate()
			want := "spec.permissions[1].http" + tc.field + ": "
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("got %v, want an error at %s", err, want)
			}
			route := &Resource{Kind: KindRoute, Name: "api", Route: &RouteSpec{Rules: []RouteRule{{Match: tc.match}}}}
			want = "spec.rules[0].match" + tc.field + ": "
			if err := route.Validate(); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("route: got %v, want an error at %s", err, want)
			}
		})
	}
}

func TestValidateAcceptsMatchable(t *testing.T) {
	for _, m := range []RouteMatch{
		{Methods: []string{"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"}},
		{PathRegex: "/users/[0-9]+"},
		{PathRegex: ".*/admin"},
		{PathPrefix: "/admin/", Headers: []HeaderMatch{{Name: "host", Exact: "Admin.Internal."}}},
		{PathExact: "/a/b.c/...", Headers: []HeaderMatch{{Name: "host", Regex: `.*\.internal`}, {Name: "x_role", Prefix: "adm"}}},
		{Headers: []HeaderMatch{{Name: "host", Exact: "[::1]"}, {Name: "cookie", Exact: "a=1"}, {Name: "x-role"}}},
	} {
		r := &Resource{Kind: KindIntention, Name: "web.api", Intention: &IntentionSpec{
			Source: "web", Destination: "api", Permissions: []IntentionPermission{{Action: Deny, HTTP: m}},
		}}
		if err := r.Validate(); err != nil {
			t.Errorf("%+v: %v", m, err)
		}
	}
}

func TestGatewayRoutePathMatchable(t *testing.T) {
	g := &Resource{Kind: KindGateway, Name: "edge", Gateway: &GatewaySpec{Listeners: []GatewayListener{{
		Port: 8000, Protocol: GatewayHTTP, Routes: []GatewayRoute{{PathPrefix: "/a/../admin", Service: "web"}},
	}}}}
	if err := g.Validate(); err == nil || !strings.Contains(err.Error(), "spec.listeners[0].routes[0].pathPrefix") {
		t.Errorf("got %v, want an error at the route's pathPrefix", err)
	}
}

func TestDefaultPolicyIsDeny(t *testing.T) {
	var none *MeshSpec
	if got := none.EffectiveDefaultPolicy(); got != Deny {
		t.Errorf("no Mesh: default policy %q, want %q", got, Deny)
	}
	if got := (&MeshSpec{}).EffectiveDefaultPolicy(); got != Deny {
		t.Errorf("empty Mesh: default policy %q, want %q", got, Deny)
	}
	if got := (&MeshSpec{DefaultPolicy: Allow}).EffectiveDefaultPolicy(); got != Allow {
		t.Errorf("allow: default policy %q", got)
	}
}
