package authz

import (
	"testing"

	v1 "github.com/trellis-mesh/trellis/api/v1"
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
