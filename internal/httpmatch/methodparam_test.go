package httpmatch

import (
	"slices"
	"testing"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// A _method parameter is a method override: Rails, Laravel and Symfony
// route POST /x?_method=DELETE as DELETE. A deny on DELETE fits it in
// every spelling a lenient framework reads as _method; an allow of POST
// does not fit it; a form POST, whose body may hold _method, fits a deny
// naming any method but POST.
func TestMethodParameterOverride(t *testing.T) {
	deny, err := Compile(v1.RouteMatch{Methods: []string{"DELETE"}}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	allow, err := Compile(v1.RouteMatch{Methods: []string{"GET", "POST"}}, Allow)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"_method=DELETE", "_method=delete", "a=1&_method=DELETE", "a=1;_method=DELETE",
		"%5Fmethod=DELETE", "_METHOD=Delete", ".method=DELETE", "+_method=DELETE",
		"[method=DELETE", "_method=%44ELETE", "_method=+DELETE+", "_method=GET&_method=DELETE",
	} {
		r := &Request{Method: "POST", Path: "/x", Query: q}
		if !deny.Match(r) {
			t.Errorf("?%s: a deny on DELETE does not fit", q)
		}
		if allow.Match(r) {
			t.Errorf("?%s: an allow of GET, POST fits", q)
		}
	}
	for _, q := range []string{"", "a=1", "method=DELETE", "x_method=DELETE", "_method=POST", "_methods=DELETE"} {
		r := &Request{Method: "POST", Path: "/x", Query: q}
		if deny.Match(r) {
			t.Errorf("?%s: a deny on DELETE fits", q)
		}
		if !allow.Match(r) {
			t.Errorf("?%s: an allow of GET, POST does not fit", q)
		}
	}
	form := &Request{Method: "POST", Path: "/x", Form: true}
	if !deny.Match(form) {
		t.Error("a form POST does not fit a deny on DELETE")
	}
	postOnly, _ := Compile(v1.RouteMatch{Methods: []string{"POST"}}, Deny)
	if !postOnly.Match(form) {
		t.Error("a form POST does not fit a deny on POST")
	}
	// An allow of POST does not grant a form POST, whose _method may be
	// DELETE; one that grants the methods a form may stand for does.
	if allow.Match(form) {
		t.Error("a form POST fits an allow of GET, POST")
	}
	every, _ := Compile(v1.RouteMatch{Methods: []string{"POST", "PUT", "PATCH", "DELETE"}}, Allow)
	if !every.Match(form) {
		t.Error("a form POST does not fit an allow of POST, PUT, PATCH, DELETE")
	}
	if !allow.Match(&Request{Method: "POST", Path: "/x"}) {
		t.Error("a POST that is no form does not fit an allow of GET, POST")
	}
	getOnly, _ := Compile(v1.RouteMatch{Methods: []string{"GET"}}, Deny)
	if getOnly.Match(&Request{Method: "POST", Path: "/x"}) {
		t.Error("a POST that is no form fits a deny on GET")
	}
}

func FuzzMethodParams(f *testing.F) {
	for _, s := range []string{"", "_method=DELETE", "a=1;%5Fmethod=x", "%zz=1&_method=%zz", ".method", "&&;=", "_method"} {
		f.Add(s)
	}
	deny, _ := Compile(v1.RouteMatch{Methods: []string{"DELETE"}}, Deny)
	allow, _ := Compile(v1.RouteMatch{Methods: []string{"POST"}}, Allow)
	f.Fuzz(func(t *testing.T, q string) {
		ps := MethodParams(q)
		r := &Request{Method: "POST", Path: "/", Query: q}
		named := slices.ContainsFunc(ps, func(v string) bool { return trimOWS(v) != "" && equalFoldASCII(trimOWS(v), "DELETE") })
		if named && !deny.Match(r) {
			t.Fatalf("%q names DELETE in %q but a deny on DELETE does not fit", q, ps)
		}
		if named && allow.Match(r) {
			t.Fatalf("%q names DELETE in %q but an allow of POST fits", q, ps)
		}
	})
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'a' <= x && x <= 'z' {
			x -= 'a' - 'A'
		}
		if 'a' <= y && y <= 'z' {
			y -= 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
