package l7

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
)

// Headers the proxies set.
const (
	// RequestIDHeader identifies a request across every hop; made when
	// missing, kept when present.
	RequestIDHeader = "X-Request-Id"
	// PeerHeader hands the app its caller's identity, as Envoy's XFCC:
	// By=<this service's SPIFFE ID>;URI=<the caller's>. The inbound proxy
	// always replaces it, so a caller cannot forge it.
	PeerHeader = "X-Forwarded-Client-Cert"
	// UpstreamTimeHeader is the time in milliseconds from sending a
	// request to the upstream's response headers, as Envoy's
	// x-envoy-upstream-service-time.
	UpstreamTimeHeader = "X-Trellis-Upstream-Service-Time"
	traceparent        = "Traceparent"
)

// setRequestContext gives a request leaving this proxy a request ID and a
// W3C trace context whose parent is a new span: this hop.
// (With a tracer, the tracer makes that span: setRequestID alone here.)
func setRequestContext(h http.Header) {
	// As h.Set for both (the names are canonical), with one array for
	// the values: a slice each would cost an allocation each.
	vals := make([]string, 0, 2)
	if h.Get(RequestIDHeader) == "" {
		vals = append(vals, newRequestID())
		h[RequestIDHeader] = vals[0:1:1]
	}
	vals = append(vals, nextTraceparent(h.Get(traceparent)))
	h[traceparent] = vals[len(vals)-1 : len(vals) : len(vals)]
}

// setRequestID gives a request a request ID if it has none.
func setRequestID(h http.Header) {
	if h.Get(RequestIDHeader) == "" {
		h.Set(RequestIDHeader, newRequestID())
	}
}

func newRequestID() string {
	var b [16]byte
	rand.Read(b[:])
	// 8-4-4-4-12 hex digits, made in place: one allocation, the string.
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// nextTraceparent keeps the trace ID and flags of a valid traceparent and
// gives it a new parent (span) ID; an absent or invalid one starts a new
// trace (W3C Trace Context, version 00).
func nextTraceparent(in string) string {
	var span [8]byte
	rand.Read(span[:])
	// 00-<32 hex trace ID>-<16 hex parent ID>-<2 hex flags>
	if len(in) == 55 && in[:3] == "00-" && in[35] == '-' && in[52] == '-' &&
		isHex(in[3:35], 32) && in[3:35] != zeroTrace && isHex(in[36:52], 16) && isHex(in[53:], 2) {
		return in[:36] + hex.EncodeToString(span[:]) + in[52:]
	}
	var trace [16]byte
	rand.Read(trace[:])
	return "00-" + hex.EncodeToString(trace[:]) + "-" + hex.EncodeToString(span[:]) + "-01"
}

var zeroTrace = strings.Repeat("0", 32)

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Body copy buffers: a small one to start with, and a large one once a
// read fills the small one (a bulk body). A buffer is held for as long as
// its body streams, and most bodies are small: a large buffer each cost
// 32 KiB per response in flight.
var (
	smallBuffers = sync.Pool{New: func() any { b := make([]byte, 4<<10); return &b }}
	largeBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)
