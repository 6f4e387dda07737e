package l7

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/httpmatch"
	"github.com/trellis-mesh/trellis/internal/proxy/h1"
)

// Limits on request heads from clients, as Envoy's defaults: larger heads
// get 431 at the first proxy. They are the HTTP/1.1 reader's (package h1),
// so that what a client's HTTP/1.1 head may hold and what sanitize lets
// through from HTTP/2 are the same.
const (
	MaxHeaderBytes  = h1.MaxHeaderBytes
	MaxHeaderFields = h1.MaxHeaderFields
)

// Room kept inside the mesh for what the proxies add to a request on its
// way (X-Forwarded-For and the gateway's forwarding fields, X-Request-Id,
// Traceparent, X-Forwarded-Client-Cert): the inbound accepts a head this
// much larger than a client may send, so that a request the first proxy
// accepted is never refused further in for its size.
const (
	MeshHeaderBytes  = 8 << 10
	MeshHeaderFields = 20
)

// headLimits bound a request head as sanitize counts it: its fields, and
// the bytes of its target, its authority and its fields (name, value and
// 4 for ": " and CRLF, as in HTTP/1.1).
type headLimits struct{ bytes, fields int }

var (
	clientLimits = headLimits{MaxHeaderBytes, MaxHeaderFields}
	meshLimits   = headLimits{MaxHeaderBytes + MeshHeaderBytes, MaxHeaderFields + MeshHeaderFields}
)

// badRequest is a request refused before anything reaches an upstream.
type badRequest struct {
	status int
	msg    string
	// reason labels the refusal in trellis_requests_refused_total: one of
	// the Reason constants, or an authz decision code.
	reason string
}

// Reasons a request is refused before any rule sees it.
const (
	ReasonMethod  = "bad_method"  // not a token, unknown, or not in capitals
	ReasonHost    = "bad_host"    // an authority that is not a host[:port]
	ReasonTarget  = "bad_target"  // the request target: scheme, userinfo, characters
	ReasonPath    = "bad_path"    // a path that does not normalize
	ReasonHeaders = "too_large"   // too many or too large header fields
	ReasonConnect = "connect"     // CONNECT is not proxied
	ReasonStream  = "bad_request" // a request stream that does not make a request
	ReasonH2C     = "h2c_upgrade" // an upgrade to HTTP/2 over cleartext (h2c)
)

func (e *badRequest) Error() string { return e.msg }

// sanitize checks a request head and normalizes its path in place, so that
// routing, authorization and the app all see the same path. It returns a
// *badRequest for what is refused.
//
// Paths: percent-encoded unreserved characters are decoded ("%41" is "A",
// "%2e" is "."), dot segments are resolved ("/a/../b" is "/b", and ".."
// never climbs above "/"), and repeated slashes merge ("//a" is "/a").
// Refused with 400: encoded slashes and backslashes ("%2F", "%5C"), raw
// backslashes, NUL and other control characters, and malformed
// percent-encoding: each has let requests slip past path rules in proxies
// that decoded differently from the app.
//
// Refused too: a path that is not valid UTF-8 once percent-decoded
// (overlong forms such as %c0%ae, stray bytes such as %ff). Paths match
// case-sensitively (RFC 3986 section 6.2.2.1): /Admin is not /admin.
//
// Transfer-Encoding and Content-Length together, and every other framing
// two parsers could read two ways, are refused by Server's HTTP/1.1 reader
// before this runs (see package h1).
func sanitize(r *http.Request) error { return sanitizeWithin(r, clientLimits) }

// sanitizeWithin is sanitize with the head limits lim.
func sanitizeWithin(r *http.Request, lim headLimits) error {
	if bad, ok := r.Context().Value(malformedKey{}).(*badRequest); ok {
		return bad
	}
	fields, size := 0, len(r.URL.RequestURI())+len(r.Host)
	for k, vs := range r.Header {
		fields += len(vs)
		for _, v := range vs {
			size += len(k) + len(v) + 4 // ": " and CRLF, as on the wire
		}
	}
	if fields > lim.fields {
		return &badRequest{http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("trellis: more than %d header fields", lim.fields), ReasonHeaders}
	}
	if size > lim.bytes {
		return &badRequest{http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("trellis: request head (target, host and fields) over %d KiB", lim.bytes>>10), ReasonHeaders}
	}
	// The method first: no rule may see a method the app could read
	// otherwise than the rules do.
	if err := checkMethod(r.Method); err != nil {
		return err
	}
	if err := checkTarget(r); err != nil {
		return err
	}
	if err := checkH2C(r.Header); err != nil {
		return err
	}
	if r.URL.Path == "*" && r.Method == http.MethodOptions {
		return nil
	}
	// The path as sent: EscapedPath escapes it anew from its decoded
	// form when it holds a character url.URL does not keep ('|', '{'),
	// which makes an encoded slash a slash ("/a/..%2Fadmin|" would be
	// "/admin|"). RawPath holds it then; otherwise EscapedPath is it.
	escaped := r.URL.RawPath
	if escaped == "" {
		escaped = r.URL.EscapedPath()
	}
	p, err := NormalizePath(escaped)
	if err != nil {
		return &badRequest{http.StatusBadRequest, "trellis: " + err.Error(), ReasonPath}
	}
	dec, err := url.PathUnescape(p)
	if err != nil {
		return &badRequest{http.StatusBadRequest, "trellis: " + err.Error(), ReasonPath}
	}
	if !utf8.ValidString(dec) {
		// Overlong forms (%c0%ae for '.') and bytes that are no UTF-8
		// (%ff): an app decoding leniently would read another path than
		// the one routed and authorized.
		return &badRequest{http.StatusBadRequest, "trellis: the path, percent-decoded, is not valid UTF-8", ReasonPath}
	}
	// What the app gets is the normalized path as sent, only the
	// characters url.URL does not keep escaped: escaped anew from its
	// decoded form, "%3B" would reach the app as ';' ("/a/..%3B/b|"
	// as "/a/..;/b%7C", a dot segment to some apps), and other reserved
	// characters the rules saw decoded would change meaning.
	// RawPath is set even when it is the path: url.URL would escape
	// '!', '*' and the like anew from Path alone.
	r.URL.Path, r.URL.RawPath = dec, escapePath(p)
	return nil
}

// checkH2C refuses an upgrade to h2c and any request carrying
// HTTP2-Settings, as Envoy does: an app that switches to HTTP/2 on the
// connection (Go's h2c.NewHandler does) would read every later request on
// it as the proxy never saw them.
func checkH2C(h http.Header) *badRequest {
	if _, ok := h["Http2-Settings"]; ok {
		return &badRequest{http.StatusBadRequest, "trellis: HTTP2-Settings is not accepted (no upgrade to h2c)", ReasonH2C}
	}
	for _, v := range h["Upgrade"] {
		for _, p := range strings.Split(v, ",") {
			name, _, _ := strings.Cut(textproto.TrimString(p), "/")
			if strings.EqualFold(name, "h2c") {
				return &badRequest{http.StatusBadRequest, "trellis: an upgrade to h2c is not proxied", ReasonH2C}
			}
		}
	}
	return nil
}

// DropUnderscoreFields removes from h every field whose name contains an
// underscore and returns how many it removed. CGI-style servers (WSGI,
// Rack, PHP) read X_Forwarded_Client_Cert as X-Forwarded-Client-Cert:
// such a field would stand beside, or in place of, one that a proxy sets
// or strips. nginx (underscores_in_headers off) and Envoy
// (headers_with_underscores_action: DROP_HEADER) drop them the same way.
// With meshOnly, only the fields that would collide with one the proxies
// set, strip or frame by are removed (see meshFields).
func DropUnderscoreFields(h http.Header, meshOnly bool) int {
	n := 0
	for k, vs := range h {
		if strings.IndexByte(k, '_') < 0 {
			continue
		}
		if meshOnly && !meshFields[strings.ToLower(strings.ReplaceAll(k, "_", "-"))] {
			continue
		}
		n += len(vs)
		delete(h, k)
	}
	return n
}

// meshFields are the fields, in lowercase, that the proxies set, replace,
// strip or read the framing from: a spelling of one of them with '_' is
// never passed on.
var meshFields = map[string]bool{
	"x-forwarded-client-cert": true, "x-forwarded-for": true, "x-forwarded-host": true,
	"x-forwarded-proto": true, "x-forwarded-port": true, "x-forwarded-prefix": true, "forwarded": true,
	"x-real-ip": true, "x-request-id": true, "traceparent": true, "tracestate": true,
	"x-trellis-upstream-service-time": true, "host": true, "content-length": true,
	"transfer-encoding": true, "connection": true, "proxy-connection": true, "keep-alive": true,
	"upgrade": true, "te": true, "trailer": true, "http2-settings": true,
	"proxy-authorization": true, "proxy-authenticate": true,
	"x-http-method-override": true, "x-http-method": true, "x-method-override": true,
}

// allowHeader lists v1.Methods, the request methods the proxies pass on
// (RFC 9110 section 9 and PATCH, RFC 5789). Methods are case-sensitive:
// "get" is not GET, and an app that reads it as GET would let it past
// every rule on GET. Anything else is refused before any rule is
// evaluated. CONNECT is refused too: the proxies do not tunnel for apps.
var allowHeader = strings.Join(v1.Methods, ", ")

// checkMethod refuses a method not in v1.Methods (spelled out here: this
// runs on every request).
func checkMethod(m string) *badRequest {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete,
		http.MethodOptions, http.MethodTrace, http.MethodPatch:
		return nil
	case http.MethodConnect:
		return &badRequest{http.StatusMethodNotAllowed, "trellis: CONNECT is not proxied", ReasonConnect}
	}
	if !validToken(m) {
		return &badRequest{http.StatusBadRequest, "trellis: the method " + quoteShort(m) + " is not a valid token", ReasonMethod}
	}
	return &badRequest{http.StatusMethodNotAllowed, "trellis: unknown method " + quoteShort(m) +
		" (methods are case-sensitive; proxied: " + allowHeader + ")", ReasonMethod}
}

// validToken reports whether s is an RFC 9110 token.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !httpguts.IsTokenRune(rune(s[i])) {
			return false
		}
	}
	return true
}

// quoteShort quotes what a client sent for a message, cut to 32 bytes.
func quoteShort(s string) string {
	if len(s) > 32 {
		return strconv.Quote(s[:32]) + "..."
	}
	return strconv.Quote(s)
}

// cut is s up to n bytes, for a log line: a client picks its length.
func cut(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// checkTarget checks the request target and the authority, and leaves
// one authority in canonical form in r.Host (httpmatch.CanonicalAuthority)
// and an origin-form target in r.URL: what rules match and what the app
// gets are then the same.
//
// An absolute-form target (GET http://a/ HTTP/1.1) names the authority
// and the Host field is ignored (RFC 9112 section 3.2.2); its scheme must
// be http or https and it may carry no userinfo. A target with a
// fragment, white space, control or non-ASCII characters is refused: RFC
// 3986 allows none of them, and apps disagree on what they mean.
func checkTarget(r *http.Request) *badRequest {
	for i := 0; i < len(r.RequestURI); i++ {
		if c := r.RequestURI[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return &badRequest{http.StatusBadRequest, "trellis: a fragment, white space, control or non-ASCII character in the request target", ReasonTarget}
		}
	}
	if r.URL.Scheme != "" || r.URL.Host != "" || r.URL.User != nil || r.URL.Opaque != "" {
		switch {
		case r.URL.Scheme != "http" && r.URL.Scheme != "https":
			return &badRequest{http.StatusBadRequest, "trellis: an absolute request target must be http or https", ReasonTarget}
		case r.URL.User != nil:
			return &badRequest{http.StatusBadRequest, "trellis: userinfo in the request target", ReasonTarget}
		case r.URL.Opaque != "" || r.URL.Host == "":
			return &badRequest{http.StatusBadRequest, "trellis: an absolute request target without a host", ReasonTarget}
		}
		r.Host = r.URL.Host
		r.URL.Scheme, r.URL.Host = "", ""
	}
	canon, _, err := httpmatch.CanonicalAuthority(r.Host)
	if err != nil {
		return &badRequest{http.StatusBadRequest, "trellis: malformed host: " + err.Error(), ReasonHost}
	}
	r.Host = canon
	return nil
}

// matchHost is the host of a canonical authority, without its port.
func matchHost(authority string) string {
	if strings.HasPrefix(authority, "[") {
		if i := strings.IndexByte(authority, ']'); i >= 0 {
			return authority[:i+1]
		}
	}
	h, _, _ := strings.Cut(authority, ":")
	return h
}

// matchRequest is what rules see of a sanitized request.
func matchRequest(r *http.Request) *httpmatch.Request {
	return &httpmatch.Request{Method: r.Method, Path: r.URL.Path, Host: matchHost(r.Host), Header: r.Header,
		Query: r.URL.RawQuery, Form: mayBeForm(r)}
}

// NormalizePath returns the normalized form of an escaped absolute path, or
// why it is refused (see sanitize).
func NormalizePath(escaped string) (string, error) {
	if !strings.HasPrefix(escaped, "/") {
		return "", errors.New("the path must start with /")
	}
	if isNormal(escaped) {
		return escaped, nil // most paths: nothing to decode or drop
	}
	return normalize(escaped)
}

// normalize is NormalizePath for a path that starts with a slash.
func normalize(escaped string) (string, error) {
	var b strings.Builder
	b.Grow(len(escaped))
	for i := 0; i < len(escaped); i++ {
		c := escaped[i]
		switch {
		case c == '%':
			if i+2 >= len(escaped) || unhex(escaped[i+1]) < 0 || unhex(escaped[i+2]) < 0 {
				return "", errors.New("malformed percent-encoding in the path")
			}
			v := byte(unhex(escaped[i+1])<<4 | unhex(escaped[i+2]))
			i += 2
			switch {
			case v == 0 || v < 0x20 || v == 0x7f:
				return "", errors.New("NUL or a control character in the path")
			case v == '/' || v == '\\':
				return "", errors.New("an encoded slash or backslash in the path")
			case unreserved(v):
				b.WriteByte(v)
			default:
				const hexDigits = "0123456789ABCDEF"
				b.WriteByte('%')
				b.WriteByte(hexDigits[v>>4])
				b.WriteByte(hexDigits[v&15])
			}
		case c == '\\':
			return "", errors.New("a backslash in the path")
		case c < 0x20 || c == 0x7f:
			return "", errors.New("NUL or a control character in the path")
		default:
			b.WriteByte(c)
		}
	}
	decoded := b.String()
	var out []string
	segs := strings.Split(decoded[1:], "/")
	for _, s := range segs {
		if dotWithParams(s) {
			// "..;x" is ".." to apps that drop segment parameters first
			// (Tomcat, Spring): it would climb past every path rule.
			return "", errors.New("a dot segment with parameters (such as ..;) in the path")
		}
		switch s {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, s)
		}
	}
	p := "/" + strings.Join(out, "/")
	last := segs[len(segs)-1]
	if len(out) > 0 && (last == "" || last == "." || last == "..") {
		p += "/" // "/a/b/" and "/a/b/." name a directory: keep the slash
	}
	return p, nil
}

// isNormal reports whether an absolute path is its own normal form: no
// percent-encoding, backslash or control character, and no empty, "." or
// ".." segment (a trailing slash aside).
func isNormal(p string) bool {
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '%' || c == '\\' || c < 0x20 || c == 0x7f:
			return false
		case c == '/':
			seg := p[i+1:]
			if j := strings.IndexByte(seg, '/'); j >= 0 {
				seg = seg[:j]
			}
			if seg == "." || seg == ".." || seg == "" && i+1 < len(p) || dotWithParams(seg) {
				return false
			}
		}
	}
	return true
}

// dotWithParams reports whether a segment is "." or ".." with
// parameters: "..;", ".;x".
func dotWithParams(seg string) bool {
	d, _, params := strings.Cut(seg, ";")
	return params && (d == "." || d == "..")
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// escapePath is an escaped path with every byte that url.URL does not
// keep as sent percent-encoded, and nothing else changed: url.URL then
// takes it as the RawPath of its decoded form, and sends it as it is.
func escapePath(p string) string {
	n := 0
	for i := 0; i < len(p); i++ {
		if !keptInPath(p[i]) {
			n++
		}
	}
	if n == 0 {
		return p
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(p)+2*n)
	for i := 0; i < len(p); i++ {
		if c := p[i]; keptInPath(c) {
			b = append(b, c)
		} else {
			b = append(b, '%', hex[c>>4], hex[c&15])
		}
	}
	return string(b)
}

// keptInPath reports whether url.URL keeps c as sent in an escaped path
// (url's validEncoded for a path).
func keptInPath(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.~$&+,/:;=@!'()*[]%", c) >= 0
}

// unreserved is RFC 3986's set, which means the same encoded or not.
func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// mayBeForm reports whether r is a POST whose body may be a form that an
// app reads a _method parameter from: an urlencoded or multipart form, or
// a body with no Content-Type (Rack parses those as forms).
func mayBeForm(r *http.Request) bool {
	if r.Method != http.MethodPost {
		return false
	}
	cts := r.Header["Content-Type"]
	if len(cts) == 0 {
		return r.ContentLength != 0
	}
	for _, ct := range cts {
		mt, _, _ := strings.Cut(ct, ";")
		mt = strings.ToLower(textproto.TrimString(mt))
		if mt == "application/x-www-form-urlencoded" || mt == "multipart/form-data" || mt == "" {
			return true
		}
	}
	return false
}
