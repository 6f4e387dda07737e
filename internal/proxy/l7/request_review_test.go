package l7

import (
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// requestHead is a request stream's head: the pseudo-header fields, then
// lines of "name: value".
func requestHead(method, authority, path string, lines ...string) []hpack.HeaderField {
	fields := []hpack.HeaderField{{Name: ":method", Value: method}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: authority}, {Name: ":path", Value: path}}
	for _, l := range lines {
		k, v, _ := strings.Cut(l, ": ")
		fields = append(fields, hpack.HeaderField{Name: k, Value: v})
	}
	return fields
}

// TestFieldsPathHeadSizeAsRequestURI: the fields path counts a request
// target toward the head limit as the http.Request path does, escaped as
// the app would get it (url.URL.RequestURI), not as sent: a target of
// characters that escape to three bytes each is refused by both, with
// the same status, or by neither.
func TestFieldsPathHeadSizeAsRequestURI(t *testing.T) {
	d := newDiffPair(t, nil)
	// Sent, each is under the inbound's limit; escaped, over it.
	n := meshLimits.bytes/3 + 1000
	for _, tc := range []struct{ name, path string }{
		{"pipes", "/" + strings.Repeat("|", n)},
		{"braces then a query", "/" + strings.Repeat("{}", n/2) + "?a=1"},
		{"spaces", "/" + strings.Repeat(" ", n)},
		{"a fragment", "/a#" + strings.Repeat("^", n)},
		{"pipes after an escape", "/%41" + strings.Repeat("|", n)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, saw := d.exchange(t, requestHead("GET", "web", tc.path), "", nil)
			if got[0] != got[1] || got[1] != 431 {
				t.Errorf("status %d on the fields path, %d on the http.Request path; want 431 on both", got[0], got[1])
			}
			if saw[0] != nil || saw[1] != nil {
				t.Errorf("the app saw a request: %v on the fields path, %v on the other", saw[0] != nil, saw[1] != nil)
			}
		})
	}
	// Just under the limit once escaped: both let it through.
	t.Run("escaped under the limit", func(t *testing.T) {
		p := "/" + strings.Repeat("|", (meshLimits.bytes-200)/3)
		got, saw := d.exchange(t, requestHead("GET", "web", p), "", nil)
		if got[0] != 200 || got[1] != 200 || !reflect.DeepEqual(saw[0], saw[1]) {
			t.Errorf("status %d on the fields path, %d on the http.Request path; want 200 and the same request", got[0], got[1])
		}
	})
}
