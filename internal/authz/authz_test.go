package authz

import (
	"strings"
	"testing"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/httpmatch"
)

func TestCheck(t *testing.T) {
	intentions := []v1.IntentionSpec{
		{Source: "greeter", Destination: "name", Action: v1.Allow},
		{Source: "*", Destination: "name", Action: v1.Deny},
		{Source: "intruder", Destination: "greeting", Action: v1.Deny},
		{Source: "greeter", Destination: "greeting", Action: v1.Allow},
	}
	tests := []struct {
		dest, policy, caller string
		want                 bool
	}{
		{"name", v1.Allow, "greeter", true},    // exact allow beats wildcard deny
		{"name", v1.Allow, "other", false},     // wildcard deny beats default allow
		{"greeting", v1.Allow, "other", true},  // default allow
		{"greeting", v1.Deny, "other", false},  // default deny: unlisted pair fails
		{"greeting", v1.Deny, "greeter", true}, // explicit allow under default deny
		{"greeting", v1.Allow, "intruder", false},
		{"unknown", v1.Deny, "greeter", false},
	}
	for _, tt := range tests {
		t.Run(tt.caller+"->"+tt.dest+"/"+tt.policy, func(t *testing.T) {
			p := ForDestination(tt.dest, tt.policy, intentions)
			if got := p.Check(tt.caller); got.Allow != tt.want {
				t.Errorf("Check(%q) = %+v, want allow=%v", tt.caller, got, tt.want)
			}
		})
	}
}

func TestCheckRequest(t *testing.T) {
	intentions := []v1.IntentionSpec{
		{Source: "web", Destination: "api", Permissions: []v1.IntentionPermission{
			{Action: v1.Deny, HTTP: v1.RouteMatch{PathPrefix: "/public/admin"}},
			{Action: v1.Allow, HTTP: v1.RouteMatch{PathPrefix: "/public/", Methods: []string{"GET", "HEAD"}}},
			{Action: v1.Allow, HTTP: v1.RouteMatch{PathExact: "/write", Headers: []v1.HeaderMatch{{Name: "x-role", Exact: "writer"}}}},
		}},
		{Source: "ops", Destination: "api", Action: v1.Allow},
	}
	p := ForDestination("api", v1.Deny, intentions)
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		caller, method, path string
		header               map[string][]string
		want                 bool
	}{
		{"web", "GET", "/public/x", nil, true},
		{"web", "POST", "/public/x", nil, false}, // method not allowed: default deny
		{"web", "GET", "/public/admin/users", nil, false},
		{"web", "GET", "/private", nil, false},
		{"web", "POST", "/write", map[string][]string{"X-Role": {"writer"}}, true},
		{"web", "POST", "/write", map[string][]string{"X-Role": {"reader"}}, false},
		{"ops", "DELETE", "/anything", nil, true}, // no permissions: the action decides
		{"other", "GET", "/public/x", nil, false},
	} {
		d := p.CheckRequest(tt.caller, &httpmatch.Request{Method: tt.method, Path: tt.path, Header: tt.header})
		if d.Allow != tt.want {
			t.Errorf("%s %s %s: %+v, want allow=%v", tt.caller, tt.method, tt.path, d, tt.want)
		}
	}
	// A connection that is not HTTP cannot be held to permissions.
	if d := p.Check("web"); d.Allow {
		t.Errorf("plain connection from a caller with HTTP permissions allowed: %+v", d)
	}
	if d := p.Check("ops"); !d.Allow {
		t.Errorf("plain connection from ops refused: %+v", d)
	}
}

func TestRefusalSaysWhichPair(t *testing.T) {
	intentions := []v1.IntentionSpec{
		{Source: "web", Destination: "api", Permissions: []v1.IntentionPermission{
			{Action: v1.Allow, HTTP: v1.RouteMatch{PathPrefix: "/public/"}},
		}},
		{Source: "batch", Destination: "api", Action: v1.Deny},
	}
	p := ForDestination("api", v1.Deny, intentions)
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		d      Decision
		reason string
		code   string
	}{
		{"no intention", p.Check("other"), "no intention allows other -> api", CodeNoIntention},
		{"plain caller", p.Check(""), "no intention allows (unauthenticated) -> api", CodeNoIntention},
		{"no permission fits", p.CheckRequest("web", &httpmatch.Request{Method: "GET", Path: "/private"}), "no intention allows web -> api", CodeNoPermission},
		{"deny", p.Check("batch"), "intention batch -> api denies batch", CodeIntention},
		{"plain connection", p.Check("web"), "intention web -> api has HTTP permissions", CodeNotHTTP},
	} {
		if tc.d.Allow || !strings.HasPrefix(tc.d.Reason, tc.reason) || tc.d.Code != tc.code {
			t.Errorf("%s: got %+v, want a refusal %q (%s)", tc.name, tc.d, tc.reason, tc.code)
		}
	}
}

// TestUnknownDefaultDenies: only an explicit allow opens what no
// intention names.
func TestUnknownDefaultDenies(t *testing.T) {
	for _, policy := range []string{"", "Allow", "permit"} {
		if d := ForDestination("api", policy, nil).Check("web"); d.Allow {
			t.Errorf("default policy %q allowed: %+v", policy, d)
		}
	}
	if d := ForDestination("api", v1.Allow, nil).Check("web"); !d.Allow {
		t.Errorf("default allow refused: %+v", d)
	}
}

// TestUncompiledPolicyRefuses: a policy whose permissions were never
// compiled (decoded, say, and Compile forgotten) refuses every request,
// even where its only permission is a deny that would otherwise fit
// nothing and leave the caller allowed.
func TestUncompiledPolicyRefuses(t *testing.T) {
	intentions := []v1.IntentionSpec{{
		Source: "web", Destination: "api", Action: v1.Allow,
		Permissions: []v1.IntentionPermission{
			{Action: v1.Deny, HTTP: v1.RouteMatch{PathPrefix: "/admin"}},
			{Action: v1.Allow, HTTP: v1.RouteMatch{}},
		},
	}}
	p := ForDestination("api", v1.Allow, intentions)
	for _, path := range []string{"/admin", "/public"} {
		d := p.CheckRequest("web", &httpmatch.Request{Method: "GET", Path: path})
		if d.Allow {
			t.Errorf("uncompiled policy: GET %s allowed (%s), want refused", path, d.Reason)
		}
		if !strings.Contains(d.Reason, "never compiled") {
			t.Errorf("uncompiled policy: reason %q, want it to say the policy was never compiled", d.Reason)
		}
	}
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	if d := p.CheckRequest("web", &httpmatch.Request{Method: "GET", Path: "/admin"}); d.Allow {
		t.Errorf("compiled: GET /admin allowed, want denied")
	}
	if d := p.CheckRequest("web", &httpmatch.Request{Method: "GET", Path: "/public"}); !d.Allow {
		t.Errorf("compiled: GET /public refused (%s), want allowed", d.Reason)
	}
}
