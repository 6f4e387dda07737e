package authz

import (
	"fmt"
	"sort"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/httpmatch"
)

// Rule is one intention as a proxy sees it: a source service, or "*" for any,
// allowed or denied, or with HTTP permissions.
type Rule struct {
	Source      string       `json:"source"`
	Allow       bool         `json:"allow"`
	Permissions []Permission `json:"permissions,omitempty"`
}

// Permission allows or denies the HTTP requests its match fits.
type Permission struct {
	Allow bool          `json:"allow"`
	HTTP  v1.RouteMatch `json:"http"`
	m     httpmatch.Matcher
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

// Compile prepares the permissions' matchers; call it once before
// CheckRequest, when the policy arrives.
func (p *Policy) Compile() error {
	for i := range p.Rules {
		for j := range p.Rules[i].Permissions {
			perm := &p.Rules[i].Permissions[j]
			m, err := httpmatch.Compile(perm.HTTP)
			if err != nil {
				return fmt.Errorf("intention %s permission %d: %w", p.Rules[i].Source, j, err)
			}
			perm.m = m
		}
	}
	return nil
}

// rule returns the rule that decides for caller: one naming the caller
// exactly wins over a wildcard one; nil means the default policy.
func (p Policy) rule(caller string) *Rule {
	var wildcard *Rule
	for i := range p.Rules {
		r := &p.Rules[i]
		if r.Source == caller {
			return r
		}
		if r.Source == "*" {
			wildcard = r
		}
	}
	return wildcard
}

// Check decides a connection from caller. A caller whose intention has
// HTTP permissions is refused here: a connection that is not HTTP cannot
// be held to them.
func (p Policy) Check(caller string) Decision {
	r := p.rule(caller)
	switch {
	case r == nil:
		return Decision{Allow: p.DefaultAllow, Reason: "default"}
	case len(r.Permissions) > 0:
		return Decision{Allow: false, Reason: "intention " + r.Source + " (it has HTTP permissions; plain connections are refused)"}
	}
	return Decision{Allow: r.Allow, Reason: "intention " + r.Source}
}

// CheckRequest decides one HTTP request from caller: the first permission
// that fits decides, then the default policy; an intention without
// permissions decides as Check does.
func (p Policy) CheckRequest(caller string, req *httpmatch.Request) Decision {
	r := p.rule(caller)
	switch {
	case r == nil:
		return Decision{Allow: p.DefaultAllow, Reason: "default"}
	case len(r.Permissions) == 0:
		return Decision{Allow: r.Allow, Reason: "intention " + r.Source}
	}
	for i, perm := range r.Permissions {
		if perm.m.Match(req) {
			return Decision{Allow: perm.Allow, Reason: fmt.Sprintf("intention %s permission %d", r.Source, i)}
		}
	}
	return Decision{Allow: p.DefaultAllow, Reason: "intention " + r.Source + ": no permission fits, default"}
}

// ForDestination builds the policy of dest from all intentions and the
// mesh's default policy. Should two intentions name the same pair (the
// control plane refuses that on apply), deny wins.
func ForDestination(dest string, defaultPolicy string, intentions []v1.IntentionSpec) Policy {
	p := Policy{DefaultAllow: defaultPolicy != v1.Deny}
	bySource := map[string]*Rule{}
	for _, in := range intentions {
		if in.Destination != dest {
			continue
		}
		r := &Rule{Source: in.Source, Allow: in.Action == v1.Allow}
		for _, perm := range in.Permissions {
			r.Permissions = append(r.Permissions, Permission{Allow: perm.Action == v1.Allow, HTTP: perm.HTTP})
		}
		if prev, seen := bySource[in.Source]; seen {
			// The API keeps one intention per pair; should two meet
			// anyway, a plain deny stays a deny and permissions apply in
			// the order the intentions came.
			r.Allow = r.Allow && prev.Allow
			r.Permissions = append(prev.Permissions, r.Permissions...)
		}
		bySource[in.Source] = r
	}
	for _, r := range bySource {
		p.Rules = append(p.Rules, *r)
	}
	sort.Slice(p.Rules, func(i, j int) bool { return p.Rules[i].Source < p.Rules[j].Source })
	return p
}
