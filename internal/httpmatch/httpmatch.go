// Package httpmatch matches HTTP requests (method, normalized path,
// authority, headers) against the match blocks of Routes and Intention
// permissions, compiled once per snapshot. It is pure: no net/http, so the
// authorization policy can use it too.
//
// A request reaches a matcher only after the proxy checked and normalized
// it (package l7's sanitize): the method is a known one in capitals, the
// path normalized, the authority canonical (see CanonicalAuthority).
// What a matcher still has to decide is how a header that is a list is
// seen, and that depends on what the match is for (Mode):
//
//   - A header's value is the list of its elements: every field of that
//     name (several fields are one list, RFC 9110 section 5.3), each split
//     at commas (at semicolons for Cookie), optional white space trimmed,
//     empty elements dropped. Fields whose names differ from the match's
//     only by '_' for '-' count as the same header, since CGI-style
//     frameworks read X_Role as X-Role.
//   - Deny (Mode Deny) fires when any element fits, or any whole field,
//     or an element without its surrounding quotes; values and paths are
//     compared ignoring case. A deny errs on the side of refusing.
//   - Allow (Mode Allow) fits only when every element fits, as written
//     (case-sensitive): "x-role: user, admin" does not fit an allow of
//     x-role "user". An allow errs on the side of not granting.
//   - Routes (Mode Route) fit when any element fits, case-sensitive: a
//     route picks a destination, it grants nothing.
//   - Paths, methods and hosts follow the same rule. A deny also fits the
//     path with its trailing slash toggled or without segment parameters
//     ("/admin;x/y" is "/admin/y" to Tomcat), HEAD when it names GET (apps
//     serve HEAD with their GET handler), a method-override field naming
//     a denied method (or a _method query parameter naming one, which
//     Rails, Laravel and Symfony route by), and a host that
//     X-Forwarded-Host or Forwarded names; an allow requires every
//     override and forwarded host to fit. A form POST (Request.Form) may
//     carry _method in its body, which no rule sees: a deny naming any
//     method but POST fits it, and an allow fits it only if it also
//     allows PUT, PATCH and DELETE.
//
// The header name "host" matches the request's authority (HTTP/1.1 Host,
// an absolute-form target's host, or HTTP/2 :authority) in its canonical
// form: lowercase, without port or trailing dot.
package httpmatch

import (
	"fmt"
	"net/textproto"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/net/http2/hpack"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Request is what a match looks at. Its header fields come as Header, a
// map with canonical keys as in net/http, or as Fields, a list with
// lowercase names as HTTP/2 carries them (used when Header is nil): both
// are read the same way. The Host field is in neither.
type Request struct {
	Method string
	// Path is the normalized path, without query.
	Path string
	// Host is the request's authority as CanonicalAuthority gives it:
	// lowercase, without port or trailing dot; "" when the request had
	// none.
	Host   string
	Header map[string][]string
	Fields []hpack.HeaderField
	// Query is the request target's query, as sent (without '?').
	Query string
	// Form says the request is a POST whose body may be a form (an
	// urlencoded or multipart form, or a body of no declared type, which
	// Rack reads as a form): its _method parameter, which the proxy does
	// not read, may stand for another method.
	Form bool

	// aliases maps the names of fields written with '_' to their values,
	// under the canonical name with '-' (made on first use).
	aliases map[string][]string
	aliased bool
}

// values returns every field value of the header named canon (canonical
// form), those of its '_' spellings included.
func (r *Request) values(canon string) []string {
	if r.Header == nil && r.Fields != nil {
		return r.fieldValues(canon)
	}
	vs := r.Header[canon]
	if !r.aliased {
		r.aliased = true
		for k, v := range r.Header {
			if strings.IndexByte(k, '_') >= 0 {
				if r.aliases == nil {
					r.aliases = map[string][]string{}
				}
				a := textproto.CanonicalMIMEHeaderKey(strings.ReplaceAll(k, "_", "-"))
				r.aliases[a] = append(r.aliases[a], v...)
			}
		}
	}
	if extra := r.aliases[canon]; len(extra) > 0 {
		vs = append(slices.Clip(vs), extra...)
	}
	return vs
}

// fieldValues is values for a request given as Fields: the values of the
// fields named canon, then those of its '_' spellings, several cookie
// fields joined into one as net/http's header map has them (RFC 9113
// section 8.2.3).
func (r *Request) fieldValues(canon string) []string {
	var vs, aliases []string
	cookies := 0
	for _, f := range r.Fields {
		switch {
		case len(f.Name) == len(canon) && sameName(f.Name, canon, false):
			vs = append(vs, f.Value)
			if f.Name == "cookie" {
				cookies++
			}
		case len(f.Name) == len(canon) && strings.IndexByte(f.Name, '_') >= 0 && sameName(f.Name, canon, true):
			aliases = append(aliases, f.Value)
		}
	}
	if cookies > 1 {
		joined := strings.Join(vs[:cookies], "; ")
		vs = append(vs[:0], joined)
	}
	return append(vs, aliases...)
}

// sameName reports whether name is canon ignoring ASCII case (and,
// with underscore, reading each '_' of name as '-'); the lengths are
// equal. Field names are ASCII tokens: strings.EqualFold, which decodes
// UTF-8, would find two different invalid bytes equal.
func sameName(name, canon string, underscore bool) bool {
	for i := 0; i < len(name); i++ {
		a, b := name[i], canon[i]
		if underscore && a == '_' {
			a = '-'
		}
		if lower(a) != lower(b) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// Mode says what a match decides, and so how strictly header lists and
// case are read (see the package doc).
type Mode int

const (
	// Route: any element fits, case-sensitive.
	Route Mode = iota
	// Allow: every element must fit, case-sensitive.
	Allow
	// Deny: any element (or whole field, or unquoted element) fits,
	// ignoring case.
	Deny
)

// Matcher is a compiled match block, made only by Compile. A Matcher that
// did not come from Compile (the zero value, say a permission decoded from
// JSON whose policy was never compiled) matches nothing: an empty match
// block compiles to "every request", so an uncompiled one must not look
// like it, or a forgotten Compile would grant everything.
type Matcher struct {
	conds    []func(*Request) bool
	compiled bool // set by Compile only
}

// Compile compiles m for mode.
func Compile(m v1.RouteMatch, mode Mode) (Matcher, error) {
	var conds []func(*Request) bool
	if c, err := compilePath(m, mode); err != nil {
		return Matcher{}, err
	} else if c != nil {
		conds = append(conds, c)
	}
	if len(m.Methods) > 0 {
		conds = append(conds, compileMethods(m.Methods, mode))
	}
	for _, h := range m.Headers {
		c, err := compileHeader(h, mode)
		if err != nil {
			return Matcher{}, err
		}
		conds = append(conds, c)
	}
	return Matcher{conds: conds, compiled: true}, nil
}

// compilePath compiles the path condition, or returns nil. A deny also
// tries the forms of the path an app may serve as the same resource:
// without a trailing slash, or with one, and without the parameters of
// its segments ("/admin;x/users" is "/admin/users" to Tomcat and Spring).
func compilePath(m v1.RouteMatch, mode Mode) (func(*Request) bool, error) {
	fold := mode == Deny
	equal, hasPrefix := equalExact, strings.HasPrefix
	if fold {
		equal, hasPrefix = strings.EqualFold, hasPrefixFold
	}
	var fit func(path string) bool
	switch {
	case m.PathPrefix != "":
		p := m.PathPrefix
		// "/admin/" also covers "/admin": the same resource to most apps.
		dir := strings.TrimSuffix(p, "/")
		fit = func(path string) bool {
			return hasPrefix(path, p) || dir != p && equal(path, dir)
		}
	case m.PathExact != "":
		p := m.PathExact
		fit = func(path string) bool { return equal(path, p) }
	case m.PathRegex != "":
		re, err := compileRegex(m.PathRegex, fold)
		if err != nil {
			return nil, fmt.Errorf("pathRegex: %w", err)
		}
		fit = re.MatchString
	default:
		return nil, nil
	}
	if mode != Deny {
		return func(r *Request) bool { return fit(r.Path) }, nil
	}
	return func(r *Request) bool {
		for _, p := range pathForms(r.Path) {
			if fit(p) {
				return true
			}
		}
		return false
	}, nil
}

// pathForms are path, path with its trailing slash toggled, and the same
// two without segment parameters.
func pathForms(path string) []string {
	forms := make([]string, 0, 4)
	add := func(p string) {
		forms = append(forms, p)
		switch {
		case p == "/":
		case strings.HasSuffix(p, "/"):
			forms = append(forms, strings.TrimSuffix(p, "/"))
		default:
			forms = append(forms, p+"/")
		}
	}
	add(path)
	if strings.IndexByte(path, ';') >= 0 {
		segs := strings.Split(path, "/")
		for i, s := range segs {
			segs[i], _, _ = strings.Cut(s, ";")
		}
		add(strings.Join(segs, "/"))
	}
	return forms
}

// methodOverrides are the fields with which frameworks (Rails, Express's
// method-override, Symfony, ...) let a POST stand for another method.
var methodOverrides = []string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override"}

// compileMethods compiles the method condition. A deny of GET also denies
// HEAD, which apps serve with their GET handler; and a deny fits a
// request whose method-override field or _method query parameter names a
// denied method, or a form POST when it names any method but POST (the
// form's _method is out of sight); an allow requires every override to be
// allowed too.
func compileMethods(list []string, mode Mode) func(*Request) bool {
	methods := slices.Clone(list)
	if mode == Deny && slices.Contains(methods, "GET") && !slices.Contains(methods, "HEAD") {
		methods = append(methods, "HEAD")
	}
	in := func(m string) bool { return slices.Contains(methods, strings.ToUpper(m)) }
	notPost := slices.ContainsFunc(methods, func(m string) bool { return m != "POST" })
	switch mode {
	case Deny:
		return func(r *Request) bool {
			if slices.Contains(methods, r.Method) {
				return true
			}
			for _, h := range methodOverrides {
				if anyFits(r.values(h), ',', in, true) {
					return true
				}
			}
			if r.Form && notPost {
				return true
			}
			return slices.ContainsFunc(MethodParams(r.Query), func(v string) bool { return in(trimOWS(v)) })
		}
	case Allow:
		return func(r *Request) bool {
			if !slices.Contains(methods, r.Method) {
				return false
			}
			for _, h := range methodOverrides {
				if vs := r.values(h); len(vs) > 0 && !everyFits(vs, ',', in) {
					return false
				}
			}
			for _, v := range MethodParams(r.Query) {
				if !in(trimOWS(v)) {
					return false
				}
			}
			// A form's _method, which no rule sees, may name any method
			// the frameworks route by: the allow must grant them all.
			return !r.Form || formMethodsIn(in)
		}
	}
	return func(r *Request) bool { return slices.Contains(methods, r.Method) }
}

// formMethods are the methods a form POST's _method may stand for: what
// Rails, Laravel and Symfony accept there.
var formMethods = []string{"PUT", "PATCH", "DELETE"}

func formMethodsIn(in func(string) bool) bool {
	for _, m := range formMethods {
		if !in(m) {
			return false
		}
	}
	return true
}

// MethodParams returns the values of the query's parameters that some
// framework reads as _method (the method a POST stands for). The query is
// read loosely, as the most lenient of them would: pairs split at '&' and
// ';', names and values percent-decoded ('+' is a space; an invalid
// escape is kept as written), names compared ignoring case, with leading
// spaces trimmed and a first '.', ' ' or '[' read as '_' (PHP turns those
// into '_' in parameter names).
func MethodParams(query string) []string {
	if strings.IndexAny(query, "mM%") < 0 {
		return nil // no name here could read as _method
	}
	var out []string
	for pair := range strings.FieldsFuncSeq(query, func(c rune) bool { return c == '&' || c == ';' }) {
		name, value, _ := strings.Cut(pair, "=")
		name = strings.TrimLeft(looseUnescape(name), " ")
		if len(name) != len("_method") {
			continue
		}
		switch name[0] {
		case '_', '.', ' ', '[':
		default:
			continue
		}
		if strings.EqualFold(name[1:], "method") {
			out = append(out, looseUnescape(value))
		}
	}
	return out
}

// looseUnescape decodes a query component, or returns it with only '+'
// replaced when its percent-encoding is invalid.
func looseUnescape(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return strings.ReplaceAll(s, "+", " ")
}

func compileRegex(expr string, fold bool) (*regexp.Regexp, error) {
	flags := ""
	if fold {
		flags = "(?i)"
	}
	return regexp.Compile(flags + "^(?:" + expr + ")$")
}

// fits is one compiled value condition.
type fits func(string) bool

func compileHeader(h v1.HeaderMatch, mode Mode) (func(*Request) bool, error) {
	host := strings.EqualFold(h.Name, "host")
	fold := mode == Deny || host
	var fit fits
	switch {
	case h.Exact != "":
		v := h.Exact
		if host {
			v = strings.TrimSuffix(v, ".")
		}
		if fold {
			fit = func(s string) bool { return strings.EqualFold(s, v) }
		} else {
			fit = func(s string) bool { return s == v }
		}
	case h.Prefix != "":
		v := h.Prefix
		if fold {
			fit = func(s string) bool { return hasPrefixFold(s, v) }
		} else {
			fit = func(s string) bool { return strings.HasPrefix(s, v) }
		}
	case h.Regex != "":
		re, err := compileRegex(h.Regex, fold)
		if err != nil {
			return nil, fmt.Errorf("header %s regex: %w", h.Name, err)
		}
		fit = re.MatchString
	}
	if host {
		return compileHost(fit, mode), nil
	}
	name := textproto.CanonicalMIMEHeaderKey(strings.ReplaceAll(h.Name, "_", "-"))
	sep := byte(',')
	if name == "Cookie" {
		sep = ';'
	}
	if fit == nil { // present
		return func(r *Request) bool { return len(r.values(name)) > 0 }, nil
	}
	switch mode {
	case Deny:
		return func(r *Request) bool { return anyFits(r.values(name), sep, fit, true) }, nil
	case Allow:
		return func(r *Request) bool { return everyFits(r.values(name), sep, fit) }, nil
	}
	return func(r *Request) bool { return anyFits(r.values(name), sep, fit, false) }, nil
}

// compileHost compiles a condition on the authority. Apps behind proxies
// often take their host from X-Forwarded-Host or Forwarded: a deny also
// fits when one of those names a host that fits; an allow requires that
// they all do. fit nil means present.
func compileHost(fit fits, mode Mode) func(*Request) bool {
	if fit == nil {
		return func(r *Request) bool { return r.Host != "" }
	}
	if mode == Route {
		return func(r *Request) bool { return r.Host != "" && fit(r.Host) }
	}
	return func(r *Request) bool {
		fwd := forwardedHosts(r)
		if mode == Deny {
			return r.Host != "" && fit(r.Host) || slices.ContainsFunc(fwd, fit)
		}
		return r.Host != "" && fit(r.Host) && !slices.ContainsFunc(fwd, func(h string) bool { return !fit(h) })
	}
}

// forwardedHosts are the hosts X-Forwarded-Host and Forwarded's host=
// parameters name, canonical where they parse, else in lowercase.
func forwardedHosts(r *Request) []string {
	var out []string
	add := func(v string) {
		v = strings.Trim(trimOWS(v), `"`)
		if v == "" {
			return
		}
		if _, h, err := CanonicalAuthority(v); err == nil {
			v = h
		}
		out = append(out, strings.ToLower(v))
	}
	for _, f := range r.values("X-Forwarded-Host") {
		for e := range strings.SplitSeq(f, ",") {
			add(e)
		}
	}
	for _, f := range r.values("Forwarded") {
		for e := range strings.SplitSeq(f, ",") {
			for pair := range strings.SplitSeq(e, ";") {
				if k, v, ok := strings.Cut(trimOWS(pair), "="); ok && strings.EqualFold(k, "host") {
					add(v)
				}
			}
		}
	}
	return out
}

func equalExact(a, b string) bool { return a == b }

// hasPrefixFold is strings.HasPrefix ignoring case. It compares the
// bytes of s that the prefix spans, so that whatever HasPrefix accepts,
// it accepts too (even invalid UTF-8, which strings.ToLower would
// rewrite).
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

func trimOWS(s string) string { return strings.Trim(s, " \t") }

// anyFits reports whether an element fits; loose (for a deny) also tries
// each whole field and elements without their quotes.
func anyFits(fields []string, sep byte, fit fits, loose bool) bool {
	for _, f := range fields {
		if loose && fit(trimOWS(f)) {
			return true
		}
		for e := range strings.SplitSeq(f, string(sep)) {
			e = trimOWS(e)
			if e == "" {
				continue
			}
			if fit(e) {
				return true
			}
			if loose {
				if u := trimOWS(strings.Trim(e, `"`)); u != e && fit(u) {
					return true
				}
			}
		}
	}
	return false
}

// everyFits reports whether the list has elements and each one fits.
func everyFits(fields []string, sep byte, fit fits) bool {
	n := 0
	for _, f := range fields {
		for e := range strings.SplitSeq(f, string(sep)) {
			if e = trimOWS(e); e == "" {
				continue
			}
			if !fit(e) {
				return false
			}
			n++
		}
	}
	return n > 0
}

// Match reports whether r fits every condition; a Matcher that did not
// come from Compile fits nothing.
func (m Matcher) Match(r *Request) bool {
	if !m.compiled {
		return false
	}
	for _, c := range m.conds {
		if !c(r) {
			return false
		}
	}
	return true
}

// Compiled reports whether m came from Compile. A caller that decides by a
// match that does not fit (a deny rule) must check it: an uncompiled
// Matcher fits nothing, which for a deny would mean allowing.
func (m Matcher) Compiled() bool { return m.compiled }
