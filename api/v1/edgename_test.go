package v1

import (
	"strings"
	"testing"
)

func TestValidateEdgeName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want string // part of the error, "" for valid
	}{
		{"shop.example.test", ""},
		{"Shop.Example.Test", ""},
		{"*.example.test", ""},
		{"*.api.example.com", ""},
		{"tls-app.local", ""},
		{"web", ""},
		{"xn--bcher-kva.example", ""},
		{"localhost", "loopback"},
		{"LOCALHOST", "loopback"},
		{"db.localhost", "loopback"},
		{"*.localhost", "loopback"},
		{"localhost.localdomain", "loopback"},
		{"127.0.0.1", "IP address"},
		{"::1", "IP address"},
		{"[::1]", "not a letter"},
		{"127.1", "numeric"},
		{"10.0.0.1.", "ends with a dot"},
		{"0x7f.1", "numeric"},
		{"*.com", "top-level domain"},
		{"*.local", "top-level domain"},
		{"*.*.example.test", "wildcard"},
		{"a.*.example.test", "wildcard"},
		{"f*o.example.test", "not a letter"},
		{"*", "wildcard"},
		{"*.", "ends with a dot"},
		{"*..x", "empty label"},
		{"", "empty"},
		{"a..b", "empty label"},
		{"-a.example", "hyphen"},
		{"a_b.example", "not a letter"},
		{strings.Repeat("a", 64) + ".example", "longer than 63"},
		{strings.Repeat("a.", 127) + "example", "longer than 253"},
	} {
		err := ValidateEdgeName(tc.name)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: err = %v, want one with %q", tc.name, err, tc.want)
		}
	}
}

func FuzzValidateEdgeName(f *testing.F) {
	for _, s := range []string{"shop.example.test", "*.example.test", "localhost", "127.0.0.1", "*.com", "a..b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidateEdgeName(name) != nil {
			return
		}
		// Whatever passes is a name a certificate may carry: ASCII letters,
		// digits, hyphens and dots, at most one leading "*.", no loopback.
		n := strings.ToLower(strings.TrimPrefix(name, "*."))
		if strings.Contains(n, "*") || n == "localhost" || strings.HasSuffix(n, ".localhost") {
			t.Fatalf("%q accepted", name)
		}
		for _, c := range n {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
				t.Fatalf("%q accepted with %q", name, c)
			}
		}
	})
}
