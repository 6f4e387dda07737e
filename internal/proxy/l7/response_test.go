package l7

import (
	"slices"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// A stream's response head loses its hop-by-hop fields in place, keeps
// the others in order, frames by its Content-Length, and announces the
// trailers its Trailer field names but the mesh's own.
func TestStreamResponseHead(t *testing.T) {
	fields := []hpack.HeaderField{
		{Name: "x-a", Value: "1"}, {Name: "te", Value: "trailers"}, {Name: "content-length", Value: "5"},
		{Name: "trailer", Value: "grpc-status, X-Forwarded-For,grpc-message"},
		{Name: "proxy-authenticate", Value: "Basic"}, {Name: "x-a", Value: "2"},
	}
	r := streamResponse(nil, 200, fields)
	want := []hpack.HeaderField{{Name: "x-a", Value: "1"}, {Name: "content-length", Value: "5"}, {Name: "x-a", Value: "2"}}
	if !slices.Equal(r.fields, want) || r.length != 5 || r.status != 200 {
		t.Errorf("head %v, length %d, status %d; want %v, 5, 200", r.fields, r.length, r.status, want)
	}
	if !slices.Equal(r.declared, []string{"Grpc-Status", "Grpc-Message"}) {
		t.Errorf("declared trailers %v", r.declared)
	}
	if r.get("x-a") != "1" || r.get("te") != "" {
		t.Errorf("get: x-a %q, te %q", r.get("x-a"), r.get("te"))
	}
	r.del("x-a")
	if !slices.Equal(r.fields, []hpack.HeaderField{{Name: "content-length", Value: "5"}}) {
		t.Errorf("after del: %v", r.fields)
	}

	// No length, a malformed one, or two that disagree: the body's length
	// is unknown, and no Content-Length is relayed.
	for _, vs := range [][]string{nil, {"-1"}, {"5x"}, {"+5"}, {" 5"}, {"5", "6"}, {"99999999999999999999"}} {
		var f []hpack.HeaderField
		for _, v := range vs {
			f = append(f, hpack.HeaderField{Name: "content-length", Value: v})
		}
		if r := streamResponse(nil, 200, f); r.length != -1 || r.get("content-length") != "" {
			t.Errorf("content-length %q: length %d, field %q; want -1 and none", vs, r.length, r.get("content-length"))
		}
	}
	// Two that agree are one length.
	two := []hpack.HeaderField{{Name: "content-length", Value: "5"}, {Name: "content-length", Value: "5"}}
	if r := streamResponse(nil, 200, two); r.length != 5 {
		t.Errorf("two equal lengths: %d", r.length)
	}
}
