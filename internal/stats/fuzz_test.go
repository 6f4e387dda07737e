package stats

import (
	"bytes"
	"testing"
	"time"
)

// FuzzDecode: any input is decoded or refused, never a panic, and what is
// accepted is valid and encodes within the bound to a summary that
// decodes to the same.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"instance":"web-1","service":"web","intervalMs":5000,"entries":[{"direction":"outbound","source":"web","destination":"api","route":"default","version":"v1","codes":[0,10,0,0,1],"latency":[0,0,0,11,0,0,0,0,0,0,0,0,0,0,0,0]}]}`))
	f.Add([]byte(`{"instance":"web-1","service":"web","intervalMs":5000,"entries":[{"direction":"inbound","source":"","destination":"web","codes":[0,1,0,0,0],"latency":[1],"bytesSent":5,"denied":2}],"folded":3}`))
	f.Add([]byte(`{"instance":"a","service":"b","intervalMs":100,"entries":[]}`))
	f.Add([]byte(`{"instance":"web-1","service":"web","intervalMs":5000,"entries":[{"direction":"outbound","source":"api"}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Decode(b)
		if err != nil {
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("decoded summary is invalid: %v", err)
		}
		enc, err := s.Encode()
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		s2, err := Decode(enc)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		enc2, _ := s2.Encode()
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("round trip differs:\n%s\n%s", enc, enc2)
		}
	})
}

// FuzzDecodePush: any input is decoded or refused, never a panic; what is
// accepted is valid, round-trips, and merges into a ring.
func FuzzDecodePush(f *testing.F) {
	f.Add([]byte(`{"origin":"a1","intervalMs":5000,"slots":[{"slot":200000000,"entries":[{"direction":"outbound","source":"web","destination":"api","route":"default","version":"v1","codes":[0,10,0,0,1],"latency":[0,0,0,11]}]}]}`))
	f.Add([]byte(`{"origin":"b","intervalMs":1000,"slots":[{"slot":5,"entries":[{"direction":"inbound","source":"*","destination":"web","codes":[0,1,0,0,0]}]}]}`))
	f.Add([]byte(`{"origin":"b","intervalMs":1000,"slots":[]}`))
	f.Add([]byte(`{"origin":"","slots":[{"slot":-1}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodePush(b)
		if err != nil {
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("decoded push is invalid: %v", err)
		}
		enc, err := p.Encode()
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		p2, err := DecodePush(enc)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		enc2, _ := p2.Encode()
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("round trip differs:\n%s\n%s", enc, enc2)
		}
		NewRing(RingConfig{Interval: time.Duration(p.IntervalMS) * time.Millisecond}).Merge(p, time.Unix(1_000_000_000, 0))
	})
}
