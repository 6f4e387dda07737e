package identity

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{in: "spiffe://trellis.local/svc/greeter"},
		{in: "spiffe://a-b_c.example/svc/x1-2"},
		{in: "http://trellis.local/svc/greeter", wantErr: "scheme"},
		{in: "spiffe://trellis.local", wantErr: "no path"},
		{in: "spiffe://trellis.local/ns/default/sa/x", wantErr: "/svc/"},
		{in: "spiffe://trellis.local/svc/", wantErr: "trailing slash"},
		{in: "spiffe://trellis.local/svc/Greeter", wantErr: "lowercase"},
		{in: "spiffe://trellis.local/svc/a/b", wantErr: "not allowed"},
		{in: "spiffe://Trellis.local/svc/a", wantErr: "trust domain"},
		{in: "spiffe:///svc/a", wantErr: "trust domain is empty"},
		{in: "spiffe://td/svc/" + strings.Repeat("a", 64), wantErr: "longer"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			id, err := Parse(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if got := id.String(); got != tt.in {
				t.Errorf("String() = %q, want %q", got, tt.in)
			}
			if got := id.URL().String(); got != tt.in {
				t.Errorf("URL() = %q, want %q", got, tt.in)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"spiffe://td/svc/a", "spiffe://td/svc/", "spiffe://x/y/z", "", "spiffe://td/svc/a-b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		// A parsed ID must print back to the input and parse again to itself.
		if id.String() != s {
			t.Fatalf("Parse(%q).String() = %q", s, id.String())
		}
		again, err := Parse(id.URL().String())
		if err != nil || again != id {
			t.Fatalf("round trip of %q through URL: %v, %v", s, again, err)
		}
	})
}
