package tracing

import (
	"encoding/hex"
	"errors"
	"fmt"
)

// spanContext is what a W3C traceparent carries
// (https://www.w3.org/TR/trace-context/#traceparent-header).
type spanContext struct {
	traceID [16]byte
	spanID  [8]byte
	sampled bool
}

// maxTracestate is the length past which a tracestate is dropped rather
// than carried on (the W3C recommendation is to propagate at least 512).
const maxTracestate = 512

// parseTraceparent parses version-format-ID "-" trace-id "-" parent-id
// "-" flags, lowercase hex. A version other than 00 is read as 00 where
// the fields are where 00 has them, as the recommendation says; ff is
// invalid, as are all-zero IDs.
func parseTraceparent(s string) (spanContext, error) {
	var sc spanContext
	if len(s) < 55 {
		return sc, fmt.Errorf("traceparent: %d bytes, want 55", len(s))
	}
	if s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return sc, errors.New("traceparent: want VERSION-TRACEID-PARENTID-FLAGS")
	}
	if !lowerHex(s[:2]) || !lowerHex(s[3:35]) || !lowerHex(s[36:52]) || !lowerHex(s[53:55]) {
		return sc, errors.New("traceparent: want lowercase hex fields")
	}
	switch {
	case s[:2] == "ff":
		return sc, errors.New("traceparent: version ff is invalid")
	case s[:2] == "00" && len(s) != 55:
		return sc, fmt.Errorf("traceparent: version 00 with %d bytes, want 55", len(s))
	case len(s) > 55 && s[55] != '-':
		return sc, errors.New("traceparent: want a dash after the flags")
	}
	hex.Decode(sc.traceID[:], []byte(s[3:35]))
	hex.Decode(sc.spanID[:], []byte(s[36:52]))
	if sc.traceID == ([16]byte{}) || sc.spanID == ([8]byte{}) {
		return spanContext{}, errors.New("traceparent: all-zero trace or parent ID")
	}
	var flags [1]byte
	hex.Decode(flags[:], []byte(s[53:55]))
	sc.sampled = flags[0]&1 == 1
	return sc, nil
}

func lowerHex(s string) bool {
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// traceparent formats sc as a version 00 traceparent.
func (sc spanContext) traceparent() string {
	b := make([]byte, 0, 55)
	b = append(b, "00-"...)
	b = hex.AppendEncode(b, sc.traceID[:])
	b = append(b, '-')
	b = hex.AppendEncode(b, sc.spanID[:])
	if sc.sampled {
		b = append(b, "-01"...)
	} else {
		b = append(b, "-00"...)
	}
	return string(b)
}
