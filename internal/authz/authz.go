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
	// Destination is the service the policy protects, named in reasons.
	Destination string `json:"destination,omitempty"`
	// DefaultAllow applies when no rule matches the caller.
	DefaultAllow bool `json:"defaultAllow"`
	// Rules are sorted by source; at most one per source.
	Rules []Rule `json:"rules,omitempty"`
}

// Decision is the outcome of Check, with the reason for logs and metrics.
type Decision struct {
	Allow bool
	// Reason says why, for people: a refusal under the default policy
	// reads "no intention allows A -> B".
	Reason string
	// Code is the reason as a short constant, for a metric label.
	Code string
}

// Decision codes.
const (
	CodeNoIntention  = "no_intention"     // no intention names the caller; default deny
	CodeDefaultAllow = "default_allow"    // no intention names the caller; default allow
	CodeIntention    = "intention"        // an intention without permissions decided
	CodePermission   = "permission"       // one of the intention's permissions decided
	CodeNoPermission = "no_permission"    // the intention's permissions did not fit; default
	CodeNotHTTP      = "permissions_http" // a plain connection from a caller held to HTTP permissions
	CodeNotReady     = "not_ready"        // no configuration yet
	CodeGateway      = "gateway"          // a gateway takes no mesh traffic
)

// Compile prepares the permissions' matchers; call it once before
// CheckRequest, when the policy arrives.
func (p *Policy) Compile() error {
	for i := range p.Rules {
		for j := range p.Rules[i].Permissions {
			perm := &p.Rules[i].Permissions[j]
			mode := httpmatch.Deny
			if perm.Allow {
				mode = httpmatch.Allow
			}
			m, err := httpmatch.Compile(perm.HTTP, mode)
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

// callerName is how a caller appears in reasons: a plain (permissive
// mode) caller has no identity.
func callerName(caller string) string {
	if caller == "" {
		return "(unauthenticated)"
	}
	return caller
}

func (p Policy) dest() string {
	if p.Destination == "" {
		return "this service"
	}
	return p.Destination
}

// byDefault is the decision of the default policy for caller; detail, when
// set, says which intention had nothing that fit.
func (p Policy) byDefault(caller, detail string) Decision {
	code := CodeNoIntention
	if detail != "" {
		code = CodeNoPermission
	}
	if p.DefaultAllow {
		if detail == "" {
			code = CodeDefaultAllow
		}
		return Decision{Allow: true, Reason: "default allow" + detail, Code: code}
	}
	return Decision{Allow: false, Reason: "no intention allows " + callerName(caller) + " -> " + p.dest() + detail, Code: code}
}

func (p Policy) pair(r *Rule) string { return "intention " + r.Source + " -> " + p.dest() }

// Check decides a connection from caller. A caller whose intention has
// HTTP permissions is refused here: a connection that is not HTTP cannot
// be held to them.
func (p Policy) Check(caller string) Decision {
	r := p.rule(caller)
	switch {
	case r == nil:
		return p.byDefault(caller, "")
	case len(r.Permissions) > 0:
		return Decision{Allow: false, Reason: p.pair(r) + " has HTTP permissions; plain connections are refused", Code: CodeNotHTTP}
	case !r.Allow:
		return Decision{Allow: false, Reason: p.pair(r) + " denies " + callerName(caller), Code: CodeIntention}
	}
	return Decision{Allow: true, Reason: p.pair(r), Code: CodeIntention}
}

// CheckRequest decides one HTTP request from caller: the first permission
// that fits decides, then the default policy; an intention without
// permissions decides as Check does. req must have been checked and
// normalized by the proxy first (see package httpmatch).
func (p Policy) CheckRequest(caller string, req *httpmatch.Request) Decision {
	r := p.rule(caller)
	switch {
	case r == nil:
		return p.byDefault(caller, "")
	case len(r.Permissions) == 0:
		return p.Check(caller)
	}
	for i, perm := range r.Permissions {
		if !perm.m.Compiled() {
			// Compile was never called: an uncompiled deny would fit
			// nothing and so let everything through. Refuse instead.
			return Decision{Allow: false, Reason: fmt.Sprintf("%s permission %d was never compiled", p.pair(r), i), Code: CodeNotReady}
		}
		if perm.m.Match(req) {
			verb := "allows"
			if !perm.Allow {
				verb = "denies"
			}
			return Decision{Allow: perm.Allow, Reason: fmt.Sprintf("%s permission %d %s", p.pair(r), i, verb), Code: CodePermission}
		}
	}
	return p.byDefault(caller, " (no permission of "+p.pair(r)+" fits the request)")
}

// ForDestination builds the policy of dest from all intentions and the
// mesh's default policy. Should two intentions name the same pair (the
// control plane refuses that on apply), deny wins.
func ForDestination(dest string, defaultPolicy string, intentions []v1.IntentionSpec) Policy {
	// Anything but an explicit allow denies: an empty or unknown policy
	// must not open the mesh.
	p := Policy{Destination: dest, DefaultAllow: defaultPolicy == v1.Allow}
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
