package l7

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/httpmatch"
)

// DefaultTimeout bounds the wait for response headers when a rule sets no
// timeout, as Envoy's route timeout does.
const DefaultTimeout = 15 * time.Second

// Router is a compiled Route: it picks the rule for a request.
type Router struct {
	rules []*Rule
	// fallback serves requests no rule matches: every version alike.
	fallback *Rule
}

// Rule is one compiled route rule.
type Rule struct {
	Name    string
	Timeout time.Duration
	Retry   *Retry
	match   func(*httpmatch.Request) bool
	prefix  string // the matched path prefix, for rewriting
	rewrite string
	hasRW   bool
	targets []target // cumulative weights; empty means any version
	total   int
}

type target struct {
	version string
	upTo    int // cumulative weight
}

// Retry is a compiled retry policy.
type Retry struct {
	Attempts      int
	PerTryTimeout time.Duration
	on            map[string]bool
	nonIdempotent bool
}

// Compile checks and compiles spec (nil: no Route, everything to every
// version). The control plane validated it already; a proxy checks again
// because it must never apply what it cannot serve.
func Compile(spec *v1.RouteSpec) (*Router, error) {
	rt := &Router{fallback: &Rule{Name: "default", Timeout: DefaultTimeout, match: func(*httpmatch.Request) bool { return true }}}
	if spec == nil {
		return rt, nil
	}
	for i, r := range spec.Rules {
		rule, err := compileRule(i, r)
		if err != nil {
			return nil, fmt.Errorf("rules[%d]: %w", i, err)
		}
		rt.rules = append(rt.rules, rule)
	}
	return rt, nil
}

func compileRule(i int, r v1.RouteRule) (*Rule, error) {
	rule := &Rule{Name: r.Name, Timeout: DefaultTimeout, prefix: r.Match.PathPrefix, rewrite: r.PrefixRewrite, hasRW: r.PrefixRewrite != ""}
	if rule.Name == "" {
		rule.Name = fmt.Sprintf("rule-%d", i+1)
	}
	if r.Timeout != "" {
		d, err := time.ParseDuration(r.Timeout)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("timeout %q", r.Timeout)
		}
		rule.Timeout = d
	}
	match, err := compileMatch(r.Match)
	if err != nil {
		return nil, err
	}
	rule.match = match
	for _, t := range r.Targets {
		if t.Weight <= 0 {
			continue
		}
		rule.total += t.Weight
		rule.targets = append(rule.targets, target{version: t.Version, upTo: rule.total})
	}
	if len(r.Targets) > 0 && rule.total == 0 {
		return nil, fmt.Errorf("all weights are 0")
	}
	if p := r.Retries; p != nil {
		rule.Retry = &Retry{Attempts: p.Attempts, PerTryTimeout: rule.Timeout, on: map[string]bool{}, nonIdempotent: p.NonIdempotent}
		if p.PerTryTimeout != "" {
			d, err := time.ParseDuration(p.PerTryTimeout)
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("perTryTimeout %q", p.PerTryTimeout)
			}
			rule.Retry.PerTryTimeout = d
		}
		on := p.On
		if len(on) == 0 {
			on = []string{v1.RetryConnectFailure, v1.RetryReset, v1.RetryGatewayError}
		}
		for _, c := range on {
			rule.Retry.on[c] = true
		}
	}
	return rule, nil
}

func compileMatch(m v1.RouteMatch) (func(*httpmatch.Request) bool, error) {
	hm, err := httpmatch.Compile(m, httpmatch.Route)
	if err != nil {
		return nil, err
	}
	return hm.Match, nil
}

// MatchRequest returns the first rule that matches what rules see of a
// request, or the fallback.
func (rt *Router) MatchRequest(m *httpmatch.Request) *Rule {
	for _, rule := range rt.rules {
		if rule.match(m) {
			return rule
		}
	}
	return rt.fallback
}

// PickVersion draws a version by weight; "" means any version.
func (rule *Rule) PickVersion() string {
	if len(rule.targets) == 0 {
		return ""
	}
	n := rand.IntN(rule.total)
	for _, t := range rule.targets {
		if n < t.upTo {
			return t.version
		}
	}
	return rule.targets[len(rule.targets)-1].version
}

// Rewrite applies the rule's prefix rewrite to path.
func (rule *Rule) Rewrite(path string) string {
	if !rule.hasRW {
		return path
	}
	if path+"/" == rule.prefix {
		// A prefix "/api/" matches "/api" too (package httpmatch).
		return rule.rewrite
	}
	if !strings.HasPrefix(path, rule.prefix) {
		return path
	}
	out := rule.rewrite + strings.TrimPrefix(path, rule.prefix)
	// "/api/" -> "/" on "/api/x" gives "/x"; never leave "//".
	return strings.Replace(out, "//", "/", 1)
}

// rewritePaths applies the rule's prefix rewrite to a request's path,
// escaped (as it is sent) and decoded (as rules read it). The escaped
// path is rewritten as sent when it still reads as the rewritten decoded
// one (the prefix spelled alike in both), so that what the caller encoded
// ("%3B") stays encoded; else it is escaped anew from the decoded one.
func (rule *Rule) rewritePaths(escaped, path string) (string, string) {
	out := rule.Rewrite(path)
	if out == path {
		return escaped, path
	}
	esc := rule.Rewrite(escaped)
	if dec, err := url.PathUnescape(esc); err == nil && dec == out {
		return esc, out
	}
	return (&url.URL{Path: out}).EscapedPath(), out
}

// idempotent methods may be retried without the route saying so (RFC 9110
// section 9.2.2).
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}
