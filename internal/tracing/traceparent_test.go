package tracing

import (
	"strings"
	"testing"
)

func TestParseTraceparent(t *testing.T) {
	for _, tc := range []struct {
		in, err string
	}{
		{in: "00-" + incomingTrace + "-" + incomingParent + "-01"},
		{in: "01-" + incomingTrace + "-" + incomingParent + "-01-future"},
		{in: "00-" + incomingTrace + "-" + incomingParent + "-01-x", err: "version 00 with 57 bytes"},
		{in: "ff-" + incomingTrace + "-" + incomingParent + "-01", err: "version ff"},
		{in: "00-" + strings.ToUpper(incomingTrace) + "-" + incomingParent + "-01", err: "lowercase hex"},
		{in: "00-" + strings.Repeat("0", 32) + "-" + incomingParent + "-01", err: "all-zero"},
		{in: "00-" + incomingTrace + "-" + strings.Repeat("0", 16) + "-01", err: "all-zero"},
		{in: "00-" + incomingTrace + "_" + incomingParent + "-01", err: "want VERSION"},
		{in: "00-1-2-01", err: "want 55"},
	} {
		sc, err := parseTraceparent(tc.in)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case tc.err == "" && sc.traceparent() != "00"+tc.in[2:55]:
			t.Errorf("%q formats back as %q", tc.in, sc.traceparent())
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want one with %q", tc.in, err, tc.err)
		}
	}
}

func FuzzParseTraceparent(f *testing.F) {
	f.Add("00-" + incomingTrace + "-" + incomingParent + "-01")
	f.Add("01-" + incomingTrace + "-" + incomingParent + "-00-x")
	f.Add("ff-" + incomingTrace + "-" + incomingParent + "-01")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		sc, err := parseTraceparent(s)
		if err != nil {
			return
		}
		again, err := parseTraceparent(sc.traceparent())
		if err != nil || again != sc {
			t.Fatalf("%q: parsed %+v, formatted %q, parsed again %+v (%v)", s, sc, sc.traceparent(), again, err)
		}
	})
}
