package h1

import (
	"net/textproto"
	"strings"
	"testing"
)

// canonicalKey is textproto.CanonicalMIMEHeaderKey for tokens, table or
// not, in any case and length.
func FuzzCanonicalKey(f *testing.F) {
	for _, s := range []string{"host", "X-REQUEST-ID", "content-length", "x_role", "a-", "-a", "sec-websocket-key", strings.Repeat("ab-", 20)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if !isToken(name) {
			return
		}
		if got, want := canonicalKey([]byte(name)), textproto.CanonicalMIMEHeaderKey(name); got != want {
			t.Fatalf("canonicalKey(%q) = %q, want %q", name, got, want)
		}
	})
}
