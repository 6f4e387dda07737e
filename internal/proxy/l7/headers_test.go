package l7

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/identity"
)

func TestNextTraceparent(t *testing.T) {
	const trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	for _, tc := range []struct {
		in        string
		keepTrace bool
		flags     string
	}{
		{"00-" + trace + "-" + span + "-01", true, "01"},
		{"00-" + trace + "-" + span + "-00", true, "00"},
		{"", false, "01"},
		{"01-" + trace + "-" + span + "-01", false, "01"},                   // unknown version
		{"00-" + strings.Repeat("0", 32) + "-" + span + "-01", false, "01"}, // all-zero trace ID
		{"00-" + strings.ToUpper(trace) + "-" + span + "-01", false, "01"},  // uppercase hex
		{"00-" + trace + "-" + span + "-01-extra", false, "01"},             // too long
		{"00-" + trace[:31] + "-" + span + "-01", false, "01"},              // short trace ID
		{"00_" + trace + "-" + span + "-01", false, "01"},                   // bad separator
		{"00-" + trace + "-" + span[:15] + "x-01", false, "01"},             // not hex
	} {
		out := nextTraceparent(tc.in)
		parts := strings.Split(out, "-")
		if len(parts) != 4 || parts[0] != "00" || !isHex(parts[1], 32) || !isHex(parts[2], 16) || parts[3] != tc.flags {
			t.Errorf("nextTraceparent(%q) = %q: not a version-00 traceparent with flags %s", tc.in, out, tc.flags)
			continue
		}
		if got := parts[1] == trace; got != tc.keepTrace {
			t.Errorf("nextTraceparent(%q) = %q: trace kept = %v, want %v", tc.in, out, got, tc.keepTrace)
		}
		if parts[2] == span {
			t.Errorf("nextTraceparent(%q) = %q: the span ID was not renewed", tc.in, out)
		}
	}
}

func TestNameCachesStayBounded(t *testing.T) {
	c := nameCache{convert: strings.ToLower}
	for i := range 3 * maxCachedNames {
		k := fmt.Sprintf("X-Made-Up-%d", i)
		if got, want := c.get(k), strings.ToLower(k); got != want {
			t.Fatalf("get(%q) = %q, want %q", k, got, want)
		}
	}
	n := 0
	c.m.Range(func(any, any) bool { n++; return true })
	if n > maxCachedNames {
		t.Fatalf("cache holds %d names, want at most %d", n, maxCachedNames)
	}
}

func TestFieldsHeaderKeepsRepeatedNamesApart(t *testing.T) {
	h := fieldsHeader([]hpack.HeaderField{
		{Name: "accept", Value: "a"}, {Name: "x-b", Value: "1"}, {Name: "x-c", Value: "2"},
		{Name: "accept", Value: "b"}, {Name: "cookie", Value: "a=1"}, {Name: "cookie", Value: "b=2"},
	})
	want := map[string][]string{"Accept": {"a", "b"}, "X-B": {"1"}, "X-C": {"2"}, "Cookie": {"a=1; b=2"}}
	if fmt.Sprint(h) != fmt.Sprint(want) {
		t.Fatalf("fieldsHeader = %v, want %v", h, want)
	}
	// Growing one name's values must not overwrite another's.
	h["X-B"] = append(h["X-B"], "more")
	if h.Get("X-C") != "2" {
		t.Fatalf("appending to X-B changed X-C to %q", h.Get("X-C"))
	}
}

// The request ID and trace context, new on every request, go on the wire
// as never indexed; the fields that repeat are indexed.
func TestPerRequestFieldsAreNotIndexed(t *testing.T) {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	dec := hpack.NewDecoder(4096, nil)
	for i := range 3 {
		h := http.Header{"User-Agent": {"curl/8"}}
		setRequestContext(h)
		buf.Reset()
		for _, hf := range appendFields(nil, h, nil) {
			enc.WriteField(hf)
		}
		fields, err := dec.DecodeFull(buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		for _, hf := range fields {
			if want := hf.Name != "user-agent"; hf.Sensitive != want {
				t.Errorf("request %d: %s sent with never-indexed %v, want %v", i, hf.Name, hf.Sensitive, want)
			}
		}
	}
}

// PeerHeader's value names this proxy and the caller, whichever caller
// came last; for a caller like the last one it is made without an
// allocation.
func TestPeerValue(t *testing.T) {
	id := func(td, svc string) identity.ID {
		t.Helper()
		i, err := identity.New(td, svc)
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	self := id("trellis.local", "web")
	a, b := id("trellis.local", "a"), id("other.domain", "b")
	in := &Inbound{Self: func() identity.ID { return self }}
	for _, peer := range []identity.ID{a, a, b, a, b, b} {
		if got, want := in.peerValue(peer), "By="+self.String()+";URI="+peer.String(); got != want {
			t.Fatalf("peerValue(%s) = %q, want %q", peer, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { in.peerValue(b) }); n != 0 {
		t.Errorf("peerValue for the same caller again: %v allocations, want 0", n)
	}
	self = id("trellis.local", "api")
	if got, want := in.peerValue(b), "By="+self.String()+";URI="+b.String(); got != want {
		t.Fatalf("after Self changed: %q, want %q", got, want)
	}
}
