package l7

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

func TestNormalizePath(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"/", "/", ""},
		{"/a/b", "/a/b", ""},
		{"/a/b/", "/a/b/", ""},
		{"//a///b", "/a/b", ""},
		{"/a/./b/../c", "/a/c", ""},
		{"/a/%2e%2e/b", "/b", ""},
		{"/a/%2E%2E/%2e%2E/../b", "/b", ""},
		{"/../../etc/passwd", "/etc/passwd", ""},
		{"/%41%7e", "/A~", ""},
		{"/a%20b", "/a%20b", ""},
		{"/a%3fb", "/a%3Fb", ""},
		{"/a/..", "/", ""},
		{"/a/b/.", "/a/b/", ""},
		{"/a%2Fb", "", "encoded slash"},
		{"/a%2fb", "", "encoded slash"},
		{"/a%5Cb", "", "encoded slash or backslash"},
		{"/a\\b", "", "backslash"},
		{"/a%00b", "", "NUL"},
		{"/a%0ab", "", "control"},
		{"/a%zzb", "", "malformed"},
		{"/a%4", "", "malformed"},
		{"a/b", "", "must start with /"},
		{"/a;x/b;y", "/a;x/b;y", ""},
		{"/public/..;/admin", "", "dot segment with parameters"},
		{"/public/.;x/admin", "", "dot segment with parameters"},
		{"/public/%2e%2e;/admin", "", "dot segment with parameters"},
		{"/..;", "", "dot segment with parameters"},
	} {
		got, err := NormalizePath(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("NormalizePath(%q) = %q, %v; want an error about %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("NormalizePath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// raw sends one request as bytes to the outbound and returns the status
// line's code and the body.
func raw(t *testing.T, addr, req string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, req)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%q: %v", req, err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Every malformed or ambiguous request is refused at the first proxy with
// no byte reaching the app, or normalized so that the app sees exactly what
// the routes and rules saw.
func TestHostileRequests(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	a := startApp(t, "web")
	in := startInbound(t, ca, a, allowAll)
	url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in}))
	addr := strings.TrimPrefix(url, "http://")

	many := strings.Repeat("X-A: b\r\n", 101)
	big := "X-Big: " + strings.Repeat("a", 61<<10) + "\r\n"
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"encoded slash", "GET /a%2Fb HTTP/1.1\r\nHost: web\r\n\r\n", 400},
		{"encoded backslash", "GET /a%5c..%5cadmin HTTP/1.1\r\nHost: web\r\n\r\n", 400},
		{"backslash", "GET /a\\..\\admin HTTP/1.1\r\nHost: web\r\n\r\n", 400},
		{"NUL", "GET /a%00.txt HTTP/1.1\r\nHost: web\r\n\r\n", 400},
		{"bad percent", "GET /a%g0 HTTP/1.1\r\nHost: web\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost: web\r\nX-A : b\r\n\r\n", 400},
		{"space in name", "GET / HTTP/1.1\r\nHost: web\r\nX A: b\r\n\r\n", 400},
		{"NUL in value", "GET / HTTP/1.1\r\nHost: web\r\nX-A: a\x00b\r\n\r\n", 400},
		{"bare CR in value", "GET / HTTP/1.1\r\nHost: web\r\nX-A: a\rb\r\n\r\n", 400},
		{"101 headers", "GET / HTTP/1.1\r\nHost: web\r\n" + many + "\r\n", 431},
		{"61 KiB of headers", "GET / HTTP/1.1\r\nHost: web\r\n" + big + "\r\n", 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := a.hits.Load()
			code, body := raw(t, addr, tc.req)
			if code != tc.status {
				t.Errorf("status %d (%q), want %d", code, body, tc.status)
			}
			if a.hits.Load() != before {
				t.Error("the app received a refused request")
			}
		})
	}

	// Normalized: the app sees the path the rules saw.
	for in, want := range map[string]string{
		"/a/%2e%2e/admin": "/admin",
		"//x//y":          "/x/y",
		"/p/./q/../r":     "/p/r",
		"/%61pi":          "/api",
	} {
		code, body := raw(t, addr, "GET "+in+" HTTP/1.1\r\nHost: web\r\n\r\n")
		if code != 200 || body != "web "+want {
			t.Errorf("%s: %d %q, want the app to see %s", in, code, body, want)
		}
	}

	// Content-Length with Transfer-Encoding is refused, with the bytes
	// after it: the app sees neither the POST nor the smuggled GET.
	before := a.hits.Load()
	got := exchange(t, addr, "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n")
	if strings.Count(got, "HTTP/1.1 ") != 1 || !strings.HasPrefix(got, "HTTP/1.1 400 ") || !strings.Contains(got, "Connection: close") {
		t.Fatalf("CL+TE got:\n%s\nwant one 400 and the connection closed", got)
	}
	if a.hits.Load() != before {
		t.Fatal("the app received a request of a CL+TE message")
	}
}

// The shortcut for paths already normal agrees with the full
// normalization on every path of up to seven bytes over an alphabet of
// the bytes that matter.
func TestIsNormalAgrees(t *testing.T) {
	const alphabet = "/.a%2e\\;"
	var walk func(p string)
	walk = func(p string) {
		if isNormal(p) {
			if got, err := normalize(p); err != nil || got != p {
				t.Fatalf("isNormal(%q), but it normalizes to %q, %v", p, got, err)
			}
		}
		if len(p) == 7 {
			return
		}
		for i := range len(alphabet) {
			walk(p + alphabet[i:i+1])
		}
	}
	walk("/")
}

// FuzzNormalizePath: whatever path a client sends, NormalizePath either
// refuses it, for something the input has (see sanitize), or returns a
// normal path: absolute, no "//", no "." or ".." segment (not even once
// percent-decoded), its own normal form, and where the input has no
// percent-encoding, what path.Clean makes of it (a trailing slash aside),
// which never climbs above "/".
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{
		"/", "/a/b", "/a/b/", "//a///b", "/a/./b/../c", "/a/%2e%2e/b", "/a/%2E%2E/%2e%2E/../b",
		"/../../etc/passwd", "/%41%7e", "/a%20b", "/a%3fb", "/a/..", "/a/b/.", "/a%2Fb", "/a%5Cb",
		"/a\\b", "/a%00b", "/a%zzb", "/a%4", "a/b", "/a;x/b;y", "/public/..;/admin", "/%2e", "/.%2e/",
		"/%252e%252e/", "/a/.../b", "", "/\x7f", "/%c0%ae/", "/é/..", "/%2e%2E;x", "//a//", "/a;b/c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := NormalizePath(in)
		if err != nil {
			if !refusable(in) {
				t.Fatalf("NormalizePath(%q) refused a path with nothing to refuse: %v", in, err)
			}
			return
		}
		if !strings.HasPrefix(got, "/") {
			t.Fatalf("NormalizePath(%q) = %q: not absolute", in, got)
		}
		if strings.Contains(got, "//") {
			t.Fatalf("NormalizePath(%q) = %q: has //", in, got)
		}
		dec, derr := url.PathUnescape(got)
		for _, p := range []string{got, dec} {
			if derr != nil && p == dec {
				continue
			}
			for _, seg := range strings.Split(p, "/") {
				if d, _, _ := strings.Cut(seg, ";"); d == "." || d == ".." {
					t.Fatalf("NormalizePath(%q) = %q: a dot segment in %q", in, got, p)
				}
			}
		}
		if again, err := NormalizePath(got); err != nil || again != got {
			t.Fatalf("NormalizePath(%q) = %q, but NormalizePath(%q) = %q, %v: not idempotent", in, got, got, again, err)
		}
		if !strings.Contains(in, "%") {
			want := path.Clean(in)
			if trimmed := strings.TrimSuffix(got, "/"); trimmed != want && !(got == "/" && want == "/") {
				t.Fatalf("NormalizePath(%q) = %q, path.Clean gives %q", in, got, want)
			}
		}
	})
}

// refusable reports whether a path has something NormalizePath refuses:
// no leading slash, percent-encoding (malformed, or of a slash, a
// backslash or a control character), a backslash, a control character,
// or a dot segment with parameters.
func refusable(p string) bool {
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "%\\\x7f") {
		return true
	}
	for i := 0; i < len(p); i++ {
		if p[i] < 0x20 {
			return true
		}
	}
	for _, seg := range strings.Split(p, "/") {
		if dotWithParams(seg) {
			return true
		}
	}
	return false
}

// TestSanitizeReadsPathAsSent: sanitize normalizes the path as the
// client sent it, and the app gets that path, escaped only where url.URL
// must. EscapedPath escapes a path anew from its decoded form when it
// holds a character url.URL does not keep ('|', '{'): "%2F" became a
// slash ("/a/..%2Fadmin|" was "/admin|", past the refusal of encoded
// slashes), and "%3B" a ';' for the app ("..;" a dot segment to some).
func TestSanitizeReadsPathAsSent(t *testing.T) {
	for _, tc := range []struct{ target, path, uri string }{
		{"/a%2Fb|", "", ""},
		{"/a/..%2Fadmin|x", "", ""},
		{"/a%5cb{", "", ""},
		{"/public/..%3B/admin|", "/public/..;/admin|", "/public/..%3B/admin%7C"},
		{"/a%3d%40|?q=1", "/a=@|", "/a%3D%40%7C?q=1"},
		{"/%41%2e/c|d!e", "/A./c|d!e", "/A./c%7Cd!e"},
		{"/a/%2e%2e/b|", "/b|", "/b%7C"},
		{"/a%7c/b", "/a|/b", "/a%7C/b"},
		{"/a;b/c", "/a;b/c", "/a;b/c"},
	} {
		u, err := url.ParseRequestURI(tc.target)
		if err != nil {
			t.Fatal(err)
		}
		r := &http.Request{Method: "GET", URL: u, RequestURI: tc.target, Host: "web", Header: http.Header{}}
		err = sanitize(r)
		switch {
		case tc.path == "" && err == nil:
			t.Errorf("%s: accepted as %q; want 400", tc.target, r.URL.Path)
		case tc.path == "" && err.(*badRequest).reason != ReasonPath:
			t.Errorf("%s: refused for %v; want %s", tc.target, err, ReasonPath)
		case tc.path != "" && (err != nil || r.URL.Path != tc.path || r.URL.RequestURI() != tc.uri):
			t.Errorf("%s: %q, sent as %q, %v; want %q, sent as %q", tc.target, r.URL.Path, r.URL.RequestURI(), err, tc.path, tc.uri)
		}
	}
}
