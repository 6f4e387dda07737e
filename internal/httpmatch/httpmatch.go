// Package httpmatch matches HTTP requests (method, normalized path,
// headers) against the match blocks of Routes and Intention permissions,
// compiled once per snapshot. It is pure: no net/http, so the authorization
// policy can use it too.
package httpmatch

import (
	"fmt"
	"net/textproto"
	"regexp"
	"slices"
	"strings"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Request is what a match looks at. Header keys are canonical, as in
// net/http.
type Request struct {
	Method string
	Path   string
	Header map[string][]string
}

// Matcher is a compiled match block; the zero value matches everything.
type Matcher struct {
	conds []func(*Request) bool
}

// Compile compiles m.
func Compile(m v1.RouteMatch) (Matcher, error) {
	var conds []func(*Request) bool
	switch {
	case m.PathPrefix != "":
		p := m.PathPrefix
		conds = append(conds, func(r *Request) bool { return strings.HasPrefix(r.Path, p) })
	case m.PathExact != "":
		p := m.PathExact
		conds = append(conds, func(r *Request) bool { return r.Path == p })
	case m.PathRegex != "":
		re, err := regexp.Compile("^(?:" + m.PathRegex + ")$")
		if err != nil {
			return Matcher{}, fmt.Errorf("pathRegex: %w", err)
		}
		conds = append(conds, func(r *Request) bool { return re.MatchString(r.Path) })
	}
	if len(m.Methods) > 0 {
		methods := slices.Clone(m.Methods)
		conds = append(conds, func(r *Request) bool { return slices.Contains(methods, r.Method) })
	}
	for _, h := range m.Headers {
		name := textproto.CanonicalMIMEHeaderKey(h.Name)
		switch {
		case h.Exact != "":
			v := h.Exact
			conds = append(conds, func(r *Request) bool { return slices.Contains(r.Header[name], v) })
		case h.Prefix != "":
			v := h.Prefix
			conds = append(conds, func(r *Request) bool {
				return slices.ContainsFunc(r.Header[name], func(s string) bool { return strings.HasPrefix(s, v) })
			})
		case h.Regex != "":
			re, err := regexp.Compile("^(?:" + h.Regex + ")$")
			if err != nil {
				return Matcher{}, fmt.Errorf("header %s regex: %w", h.Name, err)
			}
			conds = append(conds, func(r *Request) bool { return slices.ContainsFunc(r.Header[name], re.MatchString) })
		default:
			conds = append(conds, func(r *Request) bool { return len(r.Header[name]) > 0 })
		}
	}
	return Matcher{conds: conds}, nil
}

// Match reports whether r fits every condition.
func (m Matcher) Match(r *Request) bool {
	for _, c := range m.conds {
		if !c(r) {
			return false
		}
	}
	return true
}
