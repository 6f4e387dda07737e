package stats

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func entry(dir, src, dst, route, version string, ok, failed uint64) Entry {
	e := Entry{Key: Key{Direction: dir, Source: src, Destination: dst, Route: route, Version: version}}
	e.Codes[1], e.Codes[4] = ok, failed
	e.Latency[3] = ok + failed
	return e
}

func TestLatencyBoundsMatchBuckets(t *testing.T) {
	if got, want := len(LatencyBounds)+1, NumBuckets; got != want {
		t.Fatalf("got %d buckets from the bounds, want NumBuckets %d", got, want)
	}
}

// A summary of any number of keys is bounded: at most MaxEntries entries
// and MaxSummaryBytes encoded, the busiest keys kept, nothing lost.
func TestBoundUnderManyKeys(t *testing.T) {
	for _, n := range []int{MaxEntries, MaxEntries + 1, 10_000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			s := &Summary{Instance: "web-1", Service: "web", IntervalMS: 5000}
			var total uint64
			for i := range n {
				// Long names: the worst case for the encoding.
				dst := fmt.Sprintf("svc-%s-%05d", strings.Repeat("x", 40), i)
				e := entry(Outbound, "web", dst, "rule-"+strings.Repeat("r", 57), strings.Repeat("v", 120), uint64(i+1), 1)
				if i%2 == 1 {
					e = entry(Inbound, dst, "web", "", strings.Repeat("v", 120), uint64(i+1), 1)
				}
				if i >= n-MaxEntries {
					// Long numbers in the entries kept: the worst case too.
					e.BytesSent, e.Connections, e.Retries, e.Denied = 1<<38, 1<<38, 1<<38, 1<<38
					for j := range e.Latency {
						e.Latency[j] = 1 << 38
					}
				}
				total += uint64(i + 2)
				s.Entries = append(s.Entries, e)
			}
			s.Bound()
			if len(s.Entries) > MaxEntries {
				t.Fatalf("got %d entries, want at most %d", len(s.Entries), MaxEntries)
			}
			b, err := s.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > MaxSummaryBytes {
				t.Fatalf("got %d bytes, want at most %d", len(b), MaxSummaryBytes)
			}
			var got uint64
			for _, e := range s.Entries {
				got += e.Requests()
			}
			if got != total {
				t.Errorf("got %d requests after bounding, want %d", got, total)
			}
			wantFolded := 0
			if n > MaxEntries {
				wantFolded = n - (MaxEntries - 2)
				// The busiest key stays itself.
				if s.Entries[0].Requests() != uint64(n+1) {
					t.Errorf("first entry has %d requests, want the busiest (%d)", s.Entries[0].Requests(), n+1)
				}
			}
			if s.Folded != wantFolded {
				t.Errorf("got folded %d, want %d", s.Folded, wantFolded)
			}
			d, err := Decode(b)
			if err != nil {
				t.Fatalf("decode the bounded summary: %v", err)
			}
			if len(d.Entries) != len(s.Entries) {
				t.Errorf("decoded %d entries, want %d", len(d.Entries), len(s.Entries))
			}
			t.Logf("%d keys: %d entries, %d bytes", n, len(s.Entries), len(b))
		})
	}
}

func valid() Summary {
	return Summary{Instance: "web-1", Service: "web", IntervalMS: 5000, Entries: []Entry{
		entry(Outbound, "web", "api", "default", "v1", 10, 1),
		entry(Inbound, "", "web", "", "v2", 3, 0),
		entry(Inbound, "gw", "web", "", "v2", 3, 0),
	}}
}

func encode(t *testing.T, s Summary) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDecodeRefusesMalformed(t *testing.T) {
	if _, err := Decode([]byte(encode(t, valid()))); err != nil {
		t.Fatalf("valid summary refused: %v", err)
	}
	mod := func(f func(*Summary)) string {
		s := valid()
		s.Entries = append([]Entry(nil), s.Entries...)
		f(&s)
		return encode(t, s)
	}
	tests := []struct {
		name, in, want string
	}{
		{"not json", `{"instance":`, "decode summary"},
		{"unknown field", `{"instance":"web-1","service":"web","intervalMs":5000,"entries":[],"extra":1}`, `unknown field "extra"`},
		{"trailing data", encode(t, valid()) + `{}`, "data after the summary"},
		{"negative count", `{"instance":"web-1","service":"web","intervalMs":5000,"entries":[{"direction":"inbound","source":"","destination":"web","codes":[-1,0,0,0,0],"latency":[]}]}`, "decode summary"},
		{"bad service", mod(func(s *Summary) { s.Service = "Web!" }), "service:"},
		{"no instance", mod(func(s *Summary) { s.Instance = "" }), "instance:"},
		{"interval too short", mod(func(s *Summary) { s.IntervalMS = 10 }), "intervalMs: 10"},
		{"interval too long", mod(func(s *Summary) { s.IntervalMS = 3_600_000 }), "intervalMs: 3600000"},
		{"negative folded", mod(func(s *Summary) { s.Folded = -1 }), "folded: -1"},
		{"too many entries", mod(func(s *Summary) {
			for i := range MaxEntries {
				s.Entries = append(s.Entries, entry(Outbound, "web", fmt.Sprintf("s%d", i), "", "", 1, 0))
			}
		}), "entries: 203, over the limit of 200"},
		{"bad direction", mod(func(s *Summary) { s.Entries[0].Direction = "sideways" }), `entries[0]: direction "sideways"`},
		{"bad destination", mod(func(s *Summary) { s.Entries[0].Destination = "API" }), "entries[0]: destination:"},
		{"empty destination", mod(func(s *Summary) { s.Entries[0].Destination = "" }), "entries[0]: destination:"},
		{"inbound with route", mod(func(s *Summary) { s.Entries[1].Route = "r" }), "entries[1]: route: inbound entries have none"},
		{"control char in version", mod(func(s *Summary) { s.Entries[0].Version = "v\n1" }), "entries[0]: version:"},
		{"long route", mod(func(s *Summary) { s.Entries[0].Route = strings.Repeat("r", 129) }), "entries[0]: route: 129 bytes"},
		{"count over bound", mod(func(s *Summary) { s.Entries[0].Codes[2] = 1 << 41 }), "entries[0]: codes[2]"},
		{"latency over bound", mod(func(s *Summary) { s.Entries[0].Latency[15] = 1 << 41 }), "entries[0]: latency[15]"},
		{"bytes over bound", mod(func(s *Summary) { s.Entries[0].BytesSent = 1 << 41 }), "entries[0]: bytesSent"},
		{"key twice", mod(func(s *Summary) { s.Entries = append(s.Entries, s.Entries[0]) }), "entries[3]: key web->api"},
		{"too large", `{"instance":"` + strings.Repeat("a", MaxSummaryBytes) + `"}`, "over the limit of 262144"},
		// Another service's traffic, in either direction.
		{"outbound from another service", mod(func(s *Summary) { s.Entries[0].Source = "api" }), `entries[0]: outbound traffic from "api": a proxy of "web" reports only its own service's`},
		{"inbound to another service", mod(func(s *Summary) { s.Entries[1].Destination = "api" }), `entries[1]: inbound traffic to "api": a proxy of "web" reports only its own service's`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.in))
			if err == nil {
				t.Fatalf("got no error, want one containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %q, want one containing %q", err, tt.want)
			}
		})
	}
}

// A proxy reports only its own instance's and service's traffic: a
// summary naming another is refused whatever its entries.
func TestValidateFromRefusesAnotherProxy(t *testing.T) {
	s := valid()
	if err := ValidateFrom(&s, "web", "web-1", "v2"); err != nil {
		t.Fatalf("own summary refused: %v", err)
	}
	tests := []struct{ service, instance, version, want string }{
		{"api", "web-1", "v2", `summary for service "web" on the stream of "api"`},
		{"web", "web-2", "v2", `summary for instance "web-1" on the stream of "web-2"`},
		// A v1 proxy cannot speak for v2 (and sink or lift its canary).
		{"web", "web-1", "v1", `entries[1]: inbound traffic of version "v2" on the stream of a proxy registered at version "v1"`},
		{"web", "web-1", "", `inbound traffic of version "v2"`},
	}
	for _, tt := range tests {
		err := ValidateFrom(&s, tt.service, tt.instance, tt.version)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("stream of %s/%s: got %v, want an error containing %q", tt.service, tt.instance, err, tt.want)
		}
	}
}
