package httpmatch

import (
	"golang.org/x/net/http2/hpack"
	"net/textproto"
	"strings"
	"testing"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

func TestCanonicalAuthority(t *testing.T) {
	for _, tc := range []struct {
		in, canon, host string
		bad             bool
	}{
		{in: "", canon: "", host: ""},
		{in: "web", canon: "web", host: "web"},
		{in: "Admin.Example.COM", canon: "admin.example.com", host: "admin.example.com"},
		{in: "admin.example.com.", canon: "admin.example.com", host: "admin.example.com"},
		{in: "admin.example.com.:8080", canon: "admin.example.com:8080", host: "admin.example.com"},
		{in: "web:", canon: "web", host: "web"},
		{in: "web:0080", canon: "web:80", host: "web"},
		{in: "Web:8080", canon: "web:8080", host: "web"},
		{in: "web:0", canon: "web:0", host: "web"},
		{in: "[0:0::1]:8443", canon: "[::1]:8443", host: "[::1]"},
		{in: "127.0.0.1:9", canon: "127.0.0.1:9", host: "127.0.0.1"},
		{in: "[::1]:443", canon: "[::1]:443", host: "[::1]"},
		{in: "[0:0::1]", canon: "[::1]", host: "[::1]"},
		{in: "my_host", canon: "my_host", host: "my_host"},
		{in: "admin%2einternal", bad: true},
		{in: "user@admin", bad: true},
		{in: "admin..internal", bad: true},
		{in: ".admin", bad: true},
		{in: ".", bad: true},
		{in: "web:80:80", bad: true},
		{in: "web:http", bad: true},
		{in: "web:65536", bad: true},
		{in: "[::1", bad: true},
		{in: "[fe80::1%25eth0]", bad: true},
		{in: "[127.0.0.1]", bad: true},
		{in: "[::1]x", bad: true},
		{in: "adm\u0131n", bad: true},
		{in: "a b", bad: true},
		{in: strings.Repeat("a", 254), bad: true},
	} {
		canon, host, err := CanonicalAuthority(tc.in)
		switch {
		case tc.bad && err == nil:
			t.Errorf("CanonicalAuthority(%q) = %q, %q; want an error", tc.in, canon, host)
		case !tc.bad && err != nil:
			t.Errorf("CanonicalAuthority(%q): %v", tc.in, err)
		case !tc.bad && (canon != tc.canon || host != tc.host):
			t.Errorf("CanonicalAuthority(%q) = %q, %q; want %q, %q", tc.in, canon, host, tc.canon, tc.host)
		}
	}
}

// FuzzCanonicalAuthority checks that the canonical form is stable, has
// nothing an app could read as another host, and keeps the host.
func FuzzCanonicalAuthority(f *testing.F) {
	for _, s := range []string{"web", "WEB.:80", "[::1]:1", "a..b", "x%41", "a:b:c", "[::ffff:1.2.3.4]", "1.2.3.4:65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		canon, host, err := CanonicalAuthority(in)
		if err != nil {
			return
		}
		again, host2, err := CanonicalAuthority(canon)
		if err != nil || again != canon || host2 != host {
			t.Fatalf("%q -> %q %q -> %q %q %v: not stable", in, canon, host, again, host2, err)
		}
		if !strings.HasPrefix(canon, host) || strings.ToLower(canon) != canon || strings.HasSuffix(host, ".") {
			t.Fatalf("%q -> %q, %q: not canonical", in, canon, host)
		}
		if strings.ContainsAny(canon, "%@/\\?# \t") {
			t.Fatalf("%q -> %q keeps a character an app may decode", in, canon)
		}
	})
}

func mustCompile(t testing.TB, m v1.RouteMatch, mode Mode) Matcher {
	t.Helper()
	c, err := Compile(m, mode)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHeaderLists(t *testing.T) {
	role := func(match v1.HeaderMatch) v1.RouteMatch {
		match.Name = "x-role"
		return v1.RouteMatch{Headers: []v1.HeaderMatch{match}}
	}
	for _, tc := range []struct {
		name   string
		match  v1.RouteMatch
		header map[string][]string
		// whether the match fits as a deny, an allow, a route
		deny, allow, route bool
	}{
		{"one element", role(v1.HeaderMatch{Exact: "admin"}), map[string][]string{"X-Role": {"admin"}}, true, true, true},
		{"comma list", role(v1.HeaderMatch{Exact: "admin"}), map[string][]string{"X-Role": {"user, admin"}}, true, false, true},
		{"two fields", role(v1.HeaderMatch{Exact: "admin"}), map[string][]string{"X-Role": {"user", "admin"}}, true, false, true},
		{"every element", role(v1.HeaderMatch{Exact: "admin"}), map[string][]string{"X-Role": {"admin ,admin", "admin"}}, true, true, true},
		{"empty elements", role(v1.HeaderMatch{Exact: "admin"}), map[string][]string{"X-Role": {",, admin,"}}, true, true, true},
		{"empty field", role(v1.HeaderMatch{Exact: "admin"}), map[string][]string{"X-Role": {""}}, false, false, false},
		{"absent", role(v1.HeaderMatch{Exact: "admin"}), nil, false, false, false},
		{"case", role(v1.HeaderMatch{Exact: "admin"}), map[string][]string{"X-Role": {"ADMIN"}}, true, false, false},
		{"quoted", role(v1.HeaderMatch{Exact: "admin"}), map[string][]string{"X-Role": {`"admin"`}}, true, false, false},
		{"underscore", role(v1.HeaderMatch{Exact: "admin"}), map[string][]string{"X_role": {"admin"}}, true, true, true},
		{"underscore adds to the list", role(v1.HeaderMatch{Exact: "user"}), map[string][]string{"X-Role": {"user"}, "X_role": {"admin"}}, true, false, true},
		{"prefix in a list", role(v1.HeaderMatch{Prefix: "adm"}), map[string][]string{"X-Role": {"user,admin"}}, true, false, true},
		{"regex in a list", role(v1.HeaderMatch{Regex: "adm.n"}), map[string][]string{"X-Role": {"user, admin"}}, true, false, true},
		{"regex whole field", role(v1.HeaderMatch{Regex: "user, admin"}), map[string][]string{"X-Role": {"user, admin"}}, true, false, false},
		{"present", role(v1.HeaderMatch{}), map[string][]string{"X-Role": {""}}, true, true, true},
		{"cookie list", v1.RouteMatch{Headers: []v1.HeaderMatch{{Name: "cookie", Exact: "debug=1"}}}, map[string][]string{"Cookie": {"a=b; debug=1"}}, true, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, m := range []struct {
				mode Mode
				want bool
			}{{Deny, tc.deny}, {Allow, tc.allow}, {Route, tc.route}} {
				got := mustCompile(t, tc.match, m.mode).Match(&Request{Method: "GET", Path: "/", Header: tc.header})
				if got != m.want {
					t.Errorf("mode %d: got %v, want %v", m.mode, got, m.want)
				}
			}
		})
	}
}

func TestHostAndPath(t *testing.T) {
	host := func(h v1.HeaderMatch) v1.RouteMatch {
		h.Name = "Host"
		return v1.RouteMatch{Headers: []v1.HeaderMatch{h}}
	}
	for _, tc := range []struct {
		name        string
		match       v1.RouteMatch
		req         Request
		deny, allow bool
	}{
		{"host exact", host(v1.HeaderMatch{Exact: "Admin.Internal."}), Request{Host: "admin.internal"}, true, true},
		{"host other", host(v1.HeaderMatch{Exact: "admin.internal"}), Request{Host: "web"}, false, false},
		{"host none", host(v1.HeaderMatch{}), Request{}, false, false},
		{"host present", host(v1.HeaderMatch{}), Request{Host: "web"}, true, true},
		{"host regex folds case", host(v1.HeaderMatch{Regex: `.*\.INTERNAL`}), Request{Host: "admin.internal"}, true, true},
		{"host field in the header map is not the host", host(v1.HeaderMatch{Exact: "admin"}), Request{Host: "web", Header: map[string][]string{"Host": {"admin"}}}, false, false},
		{"prefix dir", v1.RouteMatch{PathPrefix: "/admin/"}, Request{Path: "/admin"}, true, true},
		{"prefix is a string prefix", v1.RouteMatch{PathPrefix: "/admin"}, Request{Path: "/administrator"}, true, true},
		{"prefix case", v1.RouteMatch{PathPrefix: "/admin/"}, Request{Path: "/Admin/x"}, true, false},
		{"exact case", v1.RouteMatch{PathExact: "/admin"}, Request{Path: "/ADMIN"}, true, false},
		{"regex case", v1.RouteMatch{PathRegex: "/admin/.*"}, Request{Path: "/ADMIN/x"}, true, false},
		{"method", v1.RouteMatch{Methods: []string{"GET"}}, Request{Method: "GET"}, true, true},
		{"exact with a trailing slash", v1.RouteMatch{PathExact: "/admin"}, Request{Path: "/admin/"}, true, false},
		{"exact without the trailing slash", v1.RouteMatch{PathExact: "/admin/"}, Request{Path: "/admin"}, true, false},
		{"segment parameters", v1.RouteMatch{PathPrefix: "/admin/"}, Request{Path: "/admin;jsessionid=1/users"}, true, false},
		{"regex and parameters", v1.RouteMatch{PathRegex: "/admin"}, Request{Path: "/admin;x"}, true, false},
		{"HEAD is GET to a deny", v1.RouteMatch{Methods: []string{"GET"}}, Request{Method: "HEAD"}, true, false},
		{"method override", v1.RouteMatch{Methods: []string{"DELETE"}}, Request{Method: "POST", Header: map[string][]string{"X-Http-Method-Override": {"delete"}}}, true, false},
		{"allow refuses another override", v1.RouteMatch{Methods: []string{"POST"}}, Request{Method: "POST", Header: map[string][]string{"X-Method-Override": {"DELETE"}}}, true, false},
		{"allow takes an allowed override", v1.RouteMatch{Methods: []string{"POST", "PUT"}}, Request{Method: "POST", Header: map[string][]string{"X-Http-Method": {"PUT"}}}, true, true},
		{"x-forwarded-host", host(v1.HeaderMatch{Exact: "admin.internal"}), Request{Host: "web", Header: map[string][]string{"X-Forwarded-Host": {"web, Admin.Internal.:443"}}}, true, false},
		{"forwarded host", host(v1.HeaderMatch{Exact: "admin.internal"}), Request{Host: "web", Header: map[string][]string{"Forwarded": {`for=1.2.3.4;host="admin.internal"`}}}, true, false},
		{"allow with a forwarded host that fits", host(v1.HeaderMatch{Exact: "web"}), Request{Host: "web", Header: map[string][]string{"X-Forwarded-Host": {"web:80"}}}, true, true},
		{"allow with another forwarded host", host(v1.HeaderMatch{Exact: "web"}), Request{Host: "web", Header: map[string][]string{"X-Forwarded-Host": {"admin"}}}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, m := range []struct {
				mode Mode
				want bool
			}{{Deny, tc.deny}, {Allow, tc.allow}} {
				req := tc.req
				if got := mustCompile(t, tc.match, m.mode).Match(&req); got != m.want {
					t.Errorf("mode %d: got %v, want %v", m.mode, got, m.want)
				}
			}
		})
	}
}

// FuzzHeaderMatch checks the one rule a deny and an allow must keep: what
// an allow grants, the deny of the same match refuses; and a list that an
// allow grants, each of its elements alone is granted too.
func FuzzHeaderMatch(f *testing.F) {
	f.Add("admin", "user, admin", "x-role")
	f.Add("a", `"a", b`, "x_role")
	f.Add("", ",,", "cookie")
	f.Fuzz(func(t *testing.T, value, field, name string) {
		if name == "" || strings.ContainsAny(name, ":\x00") {
			return
		}
		for _, h := range []v1.HeaderMatch{{Name: name, Exact: value}, {Name: name, Prefix: value}, {Name: name}} {
			m := v1.RouteMatch{Headers: []v1.HeaderMatch{h}}
			deny, err := Compile(m, Deny)
			if err != nil {
				return
			}
			allow, _ := Compile(m, Allow)
			req := &Request{Header: map[string][]string{textproto.CanonicalMIMEHeaderKey(name): {field}}}
			if allow.Match(req) && !deny.Match(&Request{Header: req.Header}) {
				t.Fatalf("%+v on %q: an allow fits, the deny does not", h, field)
			}
		}
	})
}

// FuzzAllowImpliesDeny: for any match and request, if the match fits as
// an allow, it fits as a deny (a deny is never narrower than an allow).
func FuzzAllowImpliesDeny(f *testing.F) {
	f.Add("/admin/", "/admin;x/y", "GET", "DELETE", "admin.internal", "web", "admin.internal")
	f.Add("/a", "/A/", "HEAD", "get", "web", "WEB.", "")
	f.Fuzz(func(t *testing.T, pattern, path, method, override, hostPattern, host, forwarded string) {
		for _, m := range []v1.RouteMatch{
			{PathPrefix: pattern, Methods: []string{method}},
			{PathExact: pattern, Headers: []v1.HeaderMatch{{Name: "host", Exact: hostPattern}}},
			{Headers: []v1.HeaderMatch{{Name: "host", Prefix: hostPattern}}},
		} {
			deny, err := Compile(m, Deny)
			if err != nil {
				return
			}
			allow, _ := Compile(m, Allow)
			header := map[string][]string{"X-Http-Method-Override": {override}, "X-Forwarded-Host": {forwarded}}
			if allow.Match(&Request{Method: method, Path: path, Host: host, Header: header}) &&
				!deny.Match(&Request{Method: method, Path: path, Host: host, Header: header}) {
				t.Fatalf("%+v fits %s %q host %q as an allow, not as a deny", m, method, path, host)
			}
		}
	})
}

// TestZeroMatcherMatchesNothing: a Matcher that never went through Compile
// must not fit a request, though an empty match block compiled does fit
// every one: otherwise a forgotten Compile grants everything.
func TestZeroMatcherMatchesNothing(t *testing.T) {
	reqs := []*Request{
		{Method: "GET", Path: "/"},
		{Method: "DELETE", Path: "/admin", Host: "web", Header: map[string][]string{"X-Role": {"admin"}}},
	}
	var zero Matcher
	if zero.Compiled() {
		t.Error("zero Matcher says it is compiled")
	}
	for _, mode := range []Mode{Route, Allow, Deny} {
		empty, err := Compile(v1.RouteMatch{}, mode)
		if err != nil {
			t.Fatal(err)
		}
		if !empty.Compiled() {
			t.Errorf("mode %d: Compile returned a Matcher that says it is not compiled", mode)
		}
		for _, r := range reqs {
			if zero.Match(r) {
				t.Errorf("zero Matcher matches %s %s, want no match", r.Method, r.Path)
			}
			if !empty.Match(r) {
				t.Errorf("mode %d: compiled empty match block does not match %s %s, want a match", mode, r.Method, r.Path)
			}
		}
	}
}

// FuzzFieldsAsHeader: a request given as a field list (Fields) matches
// exactly as the same request given as net/http's header map, cookies
// joined as HTTP/2 requests have them made into one (RFC 9113 section
// 8.2.3), for every mode and kind of header match.
func FuzzFieldsAsHeader(f *testing.F) {
	f.Add("x-role: user\nx_role: admin\ncookie: a=1\ncookie: b=2", "x-role", "admin")
	f.Add("cookie: a=1\ncookie: b=2\nx-http-method-override: DELETE", "cookie", "a=1; b=2")
	f.Add("x-forwarded-host: admin\nforwarded: host=x", "host", "admin")
	f.Fuzz(func(t *testing.T, lines, name, value string) {
		var fields []hpack.HeaderField
		header := map[string][]string{}
		var cookies []string
		for line := range strings.SplitSeq(lines, "\n") {
			k, v, ok := strings.Cut(line, ": ")
			k = strings.ToLower(k)
			if !ok || k == "" || strings.ContainsAny(k, " :\x00\r\n") {
				continue
			}
			fields = append(fields, hpack.HeaderField{Name: k, Value: v})
			if k == "cookie" {
				cookies = append(cookies, v)
				continue
			}
			ck := textproto.CanonicalMIMEHeaderKey(k)
			header[ck] = append(header[ck], v)
		}
		if len(cookies) > 0 {
			header["Cookie"] = []string{strings.Join(cookies, "; ")}
		}
		if fields == nil || name == "" || strings.ContainsAny(name, ":\x00") {
			return
		}
		base := Request{Method: "POST", Path: "/", Host: "web"}
		for _, h := range []v1.HeaderMatch{{Name: name, Exact: value}, {Name: name, Prefix: value}, {Name: name}} {
			m := v1.RouteMatch{Headers: []v1.HeaderMatch{h}, Methods: []string{"POST"}}
			for _, mode := range []Mode{Route, Allow, Deny} {
				c, err := Compile(m, mode)
				if err != nil {
					return
				}
				byMap, byList := base, base
				byMap.Header, byList.Fields = header, fields
				if a, b := c.Match(&byMap), c.Match(&byList); a != b {
					t.Fatalf("%+v (mode %d) on %q: %v as a header map, %v as a field list", h, mode, lines, a, b)
				}
			}
		}
	})
}
