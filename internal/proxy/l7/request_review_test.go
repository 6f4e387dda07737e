package l7

import (
	"context"
	"log/slog"
	"reflect"
	"strings"
	"sync"
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

// logRecords keeps the attributes of the records with a given message.
type logRecords struct {
	msg  string
	mu   *sync.Mutex
	recs *[]map[string]string
}

func newLogRecords(msg string) logRecords {
	return logRecords{msg: msg, mu: &sync.Mutex{}, recs: new([]map[string]string)}
}

func (h logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (h logRecords) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h logRecords) WithGroup(string) slog.Handler            { return h }
func (h logRecords) Handle(_ context.Context, r slog.Record) error {
	if r.Message != h.msg {
		return nil
	}
	m := map[string]string{}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "duration" {
			m[a.Key] = a.Value.String()
		}
		return true
	})
	h.mu.Lock()
	*h.recs = append(*h.recs, m)
	h.mu.Unlock()
	return nil
}

func (h logRecords) take() []map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := *h.recs
	*h.recs = nil
	return r
}

// TestFieldsPathLogsAsRequest: the "request refused" and access lines of
// a request are the same on both paths: the path logged is the request's
// path, never its query (which may carry a token), and a refused
// request's path is logged even when it never was normalized.
func TestFieldsPathLogsAsRequest(t *testing.T) {
	for _, msg := range []string{"request refused", "access"} {
		t.Run(msg, func(t *testing.T) {
			logs := [2]logRecords{newLogRecords(msg), newLogRecords(msg)}
			d := newDiffPair(t, &[2]*slog.Logger{slog.New(logs[0]), slog.New(logs[1])})
			for _, head := range [][]hpack.HeaderField{
				requestHead("GET", "web", "/admin/x?token=secret"),                        // denied
				requestHead("GET", "web", "/a%41/../b?token=secret", "x-role: admin"),     // denied, normalized
				requestHead("get", "web", "/a%41/b?token=secret"),                         // a bad method
				requestHead("GET", "web", "/%c0%ae/b?token=secret"),                       // a bad path
				requestHead("GET", "web:x", "/a%20b?token=secret"),                        // a bad host
				requestHead("GET", "web", "/"+strings.Repeat("a", meshLimits.bytes)+"?t"), // too large
				requestHead("GET", "web", "/ok%41?token=secret"),                          // allowed
			} {
				d.exchange(t, head, "", nil)
				recs := [2][]map[string]string{logs[0].take(), logs[1].take()}
				if !reflect.DeepEqual(recs[0], recs[1]) {
					t.Errorf("%s: logged\n%v\non the fields path, and\n%v\non the http.Request path", head[3].Value[:min(40, len(head[3].Value))], recs[0], recs[1])
				}
			}
		})
	}
}

// TestFieldsPathPathAsSent: both paths read the path as sent and send the
// app that path, escaped only where url.URL must: no encoded slash made a
// slash, and no "%3B" made a ';' that an app reads "..;" with (a dot
// segment to Tomcat: "/public/..;/admin|" is "/admin|" there, which the
// rules never saw).
func TestFieldsPathPathAsSent(t *testing.T) {
	d := newDiffPair(t, nil)
	for _, tc := range []struct {
		path, uri string // uri "" means refused with 400
	}{
		{"/a%2Fb|", ""},
		{"/a/..%2Fadmin|x", ""},
		{"/public/..%3B/admin|", "/public/..%3B/admin%7C"},
		{"/public/..%3b/admin", "/public/..%3B/admin"},
		{"/a%3d%40|?q=1", "/a%3D%40%7C?q=1"},
	} {
		got, saw := d.exchange(t, requestHead("GET", "web", tc.path), "", nil)
		want := 200
		if tc.uri == "" {
			want = 400
		}
		if got[0] != want || got[1] != want {
			t.Errorf("%s: status %d on the fields path, %d on the http.Request path; want %d", tc.path, got[0], got[1], want)
		}
		for i, s := range saw {
			if tc.uri != "" && (s == nil || s.RequestURI != tc.uri) {
				t.Errorf("%s: the app (%d) saw %+v; want the target %s", tc.path, i, s, tc.uri)
			}
		}
	}
}

// TestFieldsPathEmptyAuthority: a request with no authority at all (an
// empty :authority, no Host field) reaches the app with the Host the
// http.Request path gives it, the app's address, not an empty one.
func TestFieldsPathEmptyAuthority(t *testing.T) {
	d := newDiffPair(t, nil)
	for _, method := range []string{"GET", "POST"} {
		got, saw := d.exchange(t, requestHead(method, "", "/x"), "", nil)
		if got[0] != 200 || got[1] != 200 {
			t.Fatalf("%s: status %d on the fields path, %d on the http.Request path; want 200", method, got[0], got[1])
		}
		if saw[0].Host != appHost || saw[1].Host != appHost {
			t.Errorf("%s: the app saw the Host %q on the fields path, %q on the http.Request path; want its address", method, saw[0].Host, saw[1].Host)
		}
	}
}
