package authz

import (
	"sort"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Rule is one intention as a proxy sees it: a source service, or "*" for any,
// allowed or denied.
type Rule struct {
	Source string `json:"source"`
	Allow  bool   `json:"allow"`
}

// Policy is the inbound authorization of one destination service.
type Policy struct {
	// DefaultAllow applies when no rule matches the caller.
	DefaultAllow bool `json:"defaultAllow"`
	// Rules are sorted by source; at most one per source.
	Rules []Rule `json:"rules,omitempty"`
}

// Decision is the outcome of Check, with the reason for logs and metrics.
type Decision struct {
	Allow bool
	// Reason is "intention <source>" or "default".
	Reason string
}

// Check decides for caller: an intention naming the caller exactly wins over
// a wildcard one, which wins over the default policy.
func (p Policy) Check(caller string) Decision {
	var wildcard *Rule
	for i := range p.Rules {
		r := &p.Rules[i]
		if r.Source == caller {
			return Decision{Allow: r.Allow, Reason: "intention " + r.Source}
		}
		if r.Source == "*" {
			wildcard = r
		}
	}
	if wildcard != nil {
		return Decision{Allow: wildcard.Allow, Reason: "intention *"}
	}
	return Decision{Allow: p.DefaultAllow, Reason: "default"}
}

// ForDestination builds the policy of dest from all intentions and the
// mesh's default policy. Should two intentions name the same pair (the
// control plane refuses that on apply), deny wins.
func ForDestination(dest string, defaultPolicy string, intentions []v1.IntentionSpec) Policy {
	p := Policy{DefaultAllow: defaultPolicy != v1.Deny}
	bySource := map[string]bool{}
	for _, in := range intentions {
		if in.Destination != dest {
			continue
		}
		allow := in.Action == v1.Allow
		if prev, seen := bySource[in.Source]; seen {
			allow = allow && prev
		}
		bySource[in.Source] = allow
	}
	for src, allow := range bySource {
		p.Rules = append(p.Rules, Rule{Source: src, Allow: allow})
	}
	sort.Slice(p.Rules, func(i, j int) bool { return p.Rules[i].Source < p.Rules[j].Source })
	return p
}
