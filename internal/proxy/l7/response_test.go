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

	// No length, or a malformed one: the body's length is unknown.
	for _, v := range []string{"", "-1", "5x"} {
		var f []hpack.HeaderField
		if v != "" {
			f = []hpack.HeaderField{{Name: "content-length", Value: v}}
		}
		if r := streamResponse(nil, 200, f); r.length != -1 {
			t.Errorf("content-length %q: length %d, want -1", v, r.length)
		}
	}
}
