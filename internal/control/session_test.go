package control

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/store"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// dashServer is a running control plane, a plain HTTPS client that trusts
// it (a browser, less the cookie jar: the tests handle cookies by hand),
// and what the server logged.
type dashServer struct {
	srv   *Server
	base  string // https://127.0.0.1:port
	hc    *http.Client
	api   *client.Client
	admin string
	logs  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startDashServer(t *testing.T) *dashServer {
	t.Helper()
	dir := t.TempDir()
	logs := &syncBuffer{}
	srv, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", Out: io.Discard, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	run := startRole(srv.Run)
	t.Cleanup(func() { run.stop(t, "control plane") })
	select {
	case <-srv.Ready():
	case err := <-run.done:
		t.Fatalf("control plane: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("control plane not ready")
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(tr.CloseIdleConnections)
	admin, err := os.ReadFile(filepath.Join(dir, AdminTokenFileName))
	if err != nil {
		t.Fatal(err)
	}
	return &dashServer{
		srv: srv, base: "https://" + srv.Addr(), hc: &http.Client{Transport: tr, Timeout: 10 * time.Second},
		api: adminClient(t, srv, dir), admin: strings.TrimSpace(string(admin)), logs: logs,
	}
}

// req is one request the tests make, as a browser or a script would.
type req struct {
	method, path string
	body         string
	cookie       *http.Cookie
	bearer       string
	csrf         string
	origin       string // "" sends none; "self" the server's own
	fetchSite    string
}

// answer is what came back.
type answer struct {
	code int
	hdr  http.Header
	body string
}

func (a answer) String() string { return fmt.Sprintf("%d %s", a.code, strings.TrimSpace(a.body)) }

func (d *dashServer) do(t *testing.T, r req) answer {
	t.Helper()
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	hr, err := http.NewRequestWithContext(t.Context(), r.method, d.base+r.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if r.body != "" {
		hr.Header.Set("Content-Type", "application/json")
	}
	if r.cookie != nil {
		hr.AddCookie(r.cookie)
	}
	if r.bearer != "" {
		hr.Header.Set("Authorization", "Bearer "+r.bearer)
	}
	if r.csrf != "" {
		hr.Header.Set(csrfHeader, r.csrf)
	}
	switch r.origin {
	case "":
	case "self":
		hr.Header.Set("Origin", d.base)
	default:
		hr.Header.Set("Origin", r.origin)
	}
	if r.fetchSite != "" {
		hr.Header.Set("Sec-Fetch-Site", r.fetchSite)
	}
	resp, err := d.hc.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{code: resp.StatusCode, hdr: resp.Header, body: string(b)}
}

// login logs in with token as the page does and returns the session
// cookie and what the server said of the session.
func (d *dashServer) login(t *testing.T, token string) (*http.Cookie, sessionInfo) {
	t.Helper()
	return d.loginWith(t, token, nil)
}

// loginWith logs in as login does, from a browser that sends the session
// cookie old (nil: none).
func (d *dashServer) loginWith(t *testing.T, token string, old *http.Cookie) (*http.Cookie, sessionInfo) {
	t.Helper()
	b, _ := json.Marshal(loginRequest{Token: token})
	hr, _ := http.NewRequestWithContext(t.Context(), "POST", d.base+"/ui/login", bytes.NewReader(b))
	if old != nil {
		hr.AddCookie(old)
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Origin", d.base)
	hr.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err := d.hc.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("login: %d %s", resp.StatusCode, body)
	}
	var info sessionInfo
	if err := json.Unmarshal(body, &info); err != nil {
		t.Fatal(err)
	}
	for _, c := range resp.Cookies() {
		if c.Name == sessionCookie {
			return c, info
		}
	}
	t.Fatalf("login set no %s cookie: %v", sessionCookie, resp.Header["Set-Cookie"])
	return nil, info
}

func intentionBody(action string) string {
	return `[{"kind":"Intention","name":"a.b","spec":{"source":"a","destination":"b","action":"` + action + `"}}]`
}

// The session cookie is HttpOnly, Secure, SameSite=Strict, Path=/; with
// it the page reads, and writes only with the session's CSRF token from
// its own origin; logout ends it.
func TestDashboardSessionAndCSRF(t *testing.T) {
	d := startDashServer(t)
	cookie, info := d.login(t, d.admin)
	if !cookie.HttpOnly || !cookie.Secure || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/" {
		t.Errorf("session cookie %+v: want HttpOnly, Secure, SameSite=Strict, Path=/", cookie)
	}
	if info.Role != "admin" || len(info.CSRF) < 40 || info.CSRF == cookie.Value {
		t.Errorf("session info %+v: want role admin and a CSRF token of its own", info)
	}
	if strings.Contains(d.logs.String(), d.admin) || strings.Contains(d.logs.String(), cookie.Value) {
		t.Error("the server logged the token or the session ID")
	}
	sess := func(r req) req { r.cookie = cookie; return r }

	if a := d.do(t, sess(req{method: "GET", path: "/v1/services"})); a.code != 200 {
		t.Fatalf("read with the session: %v", a)
	}
	writes := []struct {
		name string
		r    req
		want string
	}{
		{"no CSRF header", req{csrf: "", origin: "self"}, "needs the X-Trellis-Csrf header"},
		{"wrong CSRF token", req{csrf: strings.Repeat("A", len(info.CSRF)), origin: "self"}, "does not match"},
		{"no Origin", req{csrf: info.CSRF}, "needs an Origin header"},
		{"other origin", req{csrf: info.CSRF, origin: "https://evil.example"}, "not this server's"},
		{"http origin", req{csrf: info.CSRF, origin: strings.Replace(d.base, "https", "http", 1)}, "not an https origin"},
		{"cross-site fetch", req{csrf: info.CSRF, origin: "self", fetchSite: "cross-site"}, "another site"},
	}
	for _, w := range writes {
		t.Run(w.name, func(t *testing.T) {
			r := sess(w.r)
			r.method, r.path, r.body = "POST", "/v1/resources", intentionBody("allow")
			if a := d.do(t, r); a.code != 403 || !strings.Contains(a.body, w.want) {
				t.Errorf("got %v, want 403 saying %q", a, w.want)
			}
		})
	}
	if _, err := d.api.Get(t.Context(), v1.KindIntention, "a.b"); !client.IsNotFound(err) {
		t.Fatalf("a refused write was applied: %v", err)
	}
	ok := sess(req{method: "POST", path: "/v1/resources", body: intentionBody("allow"), csrf: info.CSRF, origin: "self", fetchSite: "same-origin"})
	if a := d.do(t, ok); a.code != 200 {
		t.Fatalf("write with session, CSRF token and origin: %v", a)
	}
	if a := d.do(t, sess(req{method: "GET", path: "/ui/session"})); a.code != 200 || !strings.Contains(a.body, info.CSRF) {
		t.Errorf("GET /ui/session: %v, want the session's CSRF token", a)
	}
	if a := d.do(t, sess(req{method: "POST", path: "/ui/logout", origin: "self"})); a.code != 403 {
		t.Errorf("logout without the CSRF token: %v, want 403", a)
	}
	if a := d.do(t, sess(req{method: "POST", path: "/ui/logout", origin: "self", csrf: info.CSRF})); a.code != 200 {
		t.Fatalf("logout: %v", a)
	}
	if a := d.do(t, sess(req{method: "GET", path: "/v1/services"})); a.code != 401 {
		t.Errorf("read after logout: %v, want 401", a)
	}
	// A made-up cookie is no session.
	fake := &http.Cookie{Name: sessionCookie, Value: strings.Repeat("x", sessionIDLen)}
	if a := d.do(t, req{method: "GET", path: "/v1/services", cookie: fake}); a.code != 401 {
		t.Errorf("read with a made-up session: %v, want 401", a)
	}
}

// A viewer reads what an admin reads but tokens, and the server refuses
// every write, by token or by session, whatever the page does.
func TestViewerCannotWrite(t *testing.T) {
	d := startDashServer(t)
	ctx := t.Context()
	vt, err := d.api.CreateToken(ctx, v1.TokenRequest{Viewer: true, Description: "ops screen"})
	if err != nil {
		t.Fatal(err)
	}
	if !vt.Viewer || vt.Admin || len(vt.Services) > 0 {
		t.Fatalf("viewer token record %+v", vt.Token)
	}
	if _, err := d.api.CreateToken(ctx, v1.TokenRequest{Viewer: true, Admin: true}); err == nil {
		t.Error("a token both viewer and admin was made")
	}
	if _, err := d.api.CreateToken(ctx, v1.TokenRequest{Viewer: true, Services: []string{"web"}}); err == nil {
		t.Error("a viewer token with services was made")
	}
	for _, path := range []string{"/v1/services", "/v1/instances", "/v1/proxies", "/v1/intentions", "/v1/resources/Route", "/v1/ca/roots", "/v1/ca/rotation"} {
		if a := d.do(t, req{method: "GET", path: path, bearer: vt.Secret}); a.code != 200 {
			t.Errorf("viewer GET %s: %v, want 200", path, a)
		}
	}
	bearerWrites := []req{
		{method: "POST", path: "/v1/resources", body: intentionBody("allow")},
		{method: "DELETE", path: "/v1/resources/Intention/a.b"},
		{method: "POST", path: "/v1/tokens", body: `{"admin":true}`},
		{method: "POST", path: "/v1/ca/sign", body: `{"service":"web","csr":"x"}`},
		{method: "POST", path: "/v1/ca/rotation", body: `{"action":"prepare"}`},
	}
	for _, r := range bearerWrites {
		r.bearer = vt.Secret
		if a := d.do(t, r); a.code != 403 || !strings.Contains(a.body, "viewer token is read-only") {
			t.Errorf("viewer %s %s: %v, want 403 saying the token is read-only", r.method, r.path, a)
		}
	}
	if a := d.do(t, req{method: "GET", path: "/v1/tokens", bearer: vt.Secret}); a.code != 403 {
		t.Errorf("viewer GET /v1/tokens: %v, want 403", a)
	}
	// By session, with everything a page could send.
	cookie, info := d.login(t, vt.Secret)
	if info.Role != "viewer" {
		t.Errorf("viewer session role %q", info.Role)
	}
	r := req{method: "POST", path: "/v1/resources", body: intentionBody("deny"), cookie: cookie, csrf: info.CSRF, origin: "self", fetchSite: "same-origin"}
	if a := d.do(t, r); a.code != 403 || !strings.Contains(a.body, "read-only") {
		t.Errorf("viewer session write: %v, want 403 saying read-only", a)
	}
	if _, err := d.api.Get(ctx, v1.KindIntention, "a.b"); !client.IsNotFound(err) {
		t.Errorf("a viewer's write was applied: %v", err)
	}
	// A service token is not for people.
	st, err := d.api.CreateToken(ctx, v1.TokenRequest{Services: []string{"web"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(loginRequest{Token: st.Secret})
	if a := d.do(t, req{method: "POST", path: "/ui/login", body: string(b), origin: "self"}); a.code != 403 || !strings.Contains(a.body, "service token") {
		t.Errorf("login with a service token: %v, want 403", a)
	}
	if a := d.do(t, req{method: "GET", path: "/v1/services", bearer: st.Secret}); a.code != 403 {
		t.Errorf("service token GET /v1/services: %v, want 403", a)
	}
}

// A session ends when its token is revoked, and never outlives it.
func TestSessionEndsWithItsToken(t *testing.T) {
	d := startDashServer(t)
	ctx := t.Context()
	tok, err := d.api.CreateToken(ctx, v1.TokenRequest{Viewer: true, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	cookie, info := d.login(t, tok.Secret)
	if info.ExpiresAt.After(*tok.ExpiresAt) {
		t.Errorf("session expires %v, after its token (%v)", info.ExpiresAt, *tok.ExpiresAt)
	}
	if a := d.do(t, req{method: "GET", path: "/v1/services", cookie: cookie}); a.code != 200 {
		t.Fatalf("read: %v", a)
	}
	if err := d.api.DeleteToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	trellistest.Eventually(t, 5*time.Second, "session refused after its token's revocation", func() error {
		if a := d.do(t, req{method: "GET", path: "/v1/services", cookie: cookie}); a.code != 401 || !strings.Contains(a.body, "revoked") {
			return fmt.Errorf("got %v", a)
		}
		return nil
	})
}

// A second login from a browser that still holds a live session ends
// that session at once: its old cookie is refused afterwards, on this
// server and, through the store, on any other.
func TestLoginEndsThePreviousSession(t *testing.T) {
	d := startDashServer(t)
	tok, err := d.api.CreateToken(t.Context(), v1.TokenRequest{Viewer: true, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, first, second string }{
		{"same token", d.admin, d.admin},
		{"another token", tok.Secret, d.admin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old, _ := d.login(t, tc.first)
			if a := d.do(t, req{method: "GET", path: "/ui/session", cookie: old}); a.code != 200 {
				t.Fatalf("the first session: %v", a)
			}
			cookie, info := d.loginWith(t, tc.second, old)
			if cookie.Value == old.Value {
				t.Fatal("the second login kept the first session's ID")
			}
			if a := d.do(t, req{method: "GET", path: "/ui/session", cookie: old}); a.code != 401 || !strings.Contains(a.body, "no such session") {
				t.Errorf("the first session after the second login: got %v, want 401 no such session", a)
			}
			if a := d.do(t, req{method: "GET", path: "/ui/session", cookie: cookie}); a.code != 200 || !strings.Contains(a.body, info.CSRF) {
				t.Errorf("the second session: got %v, want 200", a)
			}
			key, err := parseSessionID(old.Value)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := d.srv.store.Get(t.Context(), sessionKey(key)); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("the first session's record in the store: %v, want not found", err)
			}
		})
	}
	// A cookie that names no live session does not stop a login.
	fake := &http.Cookie{Name: sessionCookie, Value: strings.Repeat("x", sessionIDLen)}
	if c, _ := d.loginWith(t, d.admin, fake); c.Value == fake.Value {
		t.Error("login with a made-up cookie kept it")
	}
}

// Failed logins are limited per address, and logged (with the address
// and the reason, never the secret tried).
func TestFailedLoginsAreLimited(t *testing.T) {
	d := startDashServer(t)
	bad := "trellis_" + strings.Repeat("q", 32)
	b, _ := json.Marshal(loginRequest{Token: bad})
	for i := range loginBurst {
		if a := d.do(t, req{method: "POST", path: "/ui/login", body: string(b), origin: "self"}); a.code != 401 {
			t.Fatalf("bad login %d: %v, want 401", i+1, a)
		}
	}
	good, _ := json.Marshal(loginRequest{Token: d.admin})
	a := d.do(t, req{method: "POST", path: "/ui/login", body: string(good), origin: "self"})
	if a.code != 429 || a.hdr.Get("Retry-After") == "" || a.hdr.Get("Set-Cookie") != "" {
		t.Errorf("login after %d failures: %v, want 429 with Retry-After and no session", loginBurst, a)
	}
	logs := d.logs.String()
	if !strings.Contains(logs, "dashboard login refused") || !strings.Contains(logs, "remote=127.0.0.1:") || !strings.Contains(logs, "too many failed logins") {
		t.Errorf("refused logins not logged with address and reason:\n%s", logs)
	}
	if strings.Contains(logs, bad) || strings.Contains(logs, d.admin) {
		t.Error("a tried secret reached the log")
	}
	// A login from another site never gets as far as the token.
	if a := d.do(t, req{method: "POST", path: "/ui/login", body: string(good), origin: "https://evil.example"}); a.code != 403 {
		t.Errorf("cross-origin login: %v, want 403", a)
	}
}

// The pages come with a strict Content-Security-Policy and the other
// security headers, and load nothing from elsewhere.
func TestDashboardPagesHeaders(t *testing.T) {
	d := startDashServer(t)
	for _, path := range []string{"/ui/", "/ui/app.js", "/ui/app.css", "/ui/session"} {
		a := d.do(t, req{method: "GET", path: path})
		if path != "/ui/session" && a.code != 200 {
			t.Errorf("GET %s: %v", path, a)
		}
		h := a.hdr
		if got := h.Get("Content-Security-Policy"); got != contentSecurityPolicy {
			t.Errorf("%s: CSP %q", path, got)
		}
		if h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Referrer-Policy") != "no-referrer" || h.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: headers %v", path, h)
		}
	}
	for _, part := range []string{"default-src 'self'", "frame-ancestors 'none'", "script-src 'self'", "style-src 'self'"} {
		if !strings.Contains(contentSecurityPolicy, part) {
			t.Errorf("CSP lacks %s", part)
		}
	}
	if strings.Contains(contentSecurityPolicy, "unsafe") {
		t.Error("CSP allows something unsafe")
	}
	page := d.do(t, req{method: "GET", path: "/ui/"}).body
	if !strings.Contains(page, `<script src="app.js"`) {
		t.Errorf("index.html does not load app.js:\n%s", page)
	}
	banned := regexp.MustCompile(`<script>|<style|style=|(?i)\son[a-z]+=|https?://|//[a-z0-9.-]+\.[a-z]`)
	if m := banned.FindString(page); m != "" {
		t.Errorf("index.html holds %q: inline script or style, an event attribute or another origin", m)
	}
	if a := d.do(t, req{method: "GET", path: "/ui/session"}); a.code != 401 {
		t.Errorf("session without a cookie: %v, want 401", a)
	}
}

func FuzzParseLogin(f *testing.F) {
	f.Add([]byte(`{"token":"trellis_abc"}`))
	f.Add([]byte(`{"token":""}`))
	f.Add([]byte(`{"token":"a","x":1}`))
	f.Add([]byte(`{"token":"a"}{"token":"b"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		secret, err := parseLogin(body)
		if err == nil && (secret == "" || strings.TrimSpace(secret) != secret) {
			t.Fatalf("parseLogin(%q) = %q, want a non-empty trimmed secret", body, secret)
		}
		if err != nil && len(body) > 20 && strings.Contains(err.Error(), string(body)) {
			t.Fatalf("the error repeats the body, which may hold a secret: %v", err)
		}
	})
}

func FuzzSessionCookie(f *testing.F) {
	id, _ := randomID()
	f.Add(id, "https://127.0.0.1:7700", "127.0.0.1:7700")
	f.Add("", "", "")
	f.Add(strings.Repeat("=", sessionIDLen), "https://a@b", "b")
	f.Add(id[:sessionIDLen-1]+"+", "https://B:1/", "b:1")
	f.Fuzz(func(t *testing.T, cookie, origin, host string) {
		key, err := parseSessionID(cookie)
		if err == nil {
			if len(cookie) != sessionIDLen || len(key) != 64 {
				t.Fatalf("parseSessionID(%q) = %q", cookie, key)
			}
			if strings.ContainsAny(cookie, "+/=") {
				t.Fatalf("parseSessionID accepted %q, not base64url", cookie)
			}
		}
		if checkOrigin(origin, host) == nil {
			if !strings.EqualFold(origin, "https://"+host) {
				t.Fatalf("checkOrigin(%q, %q) accepted another origin", origin, host)
			}
		}
	})
}

// A proxy's node and certificate expiry reach its status, which the
// Nodes page shows: from the registration, as the proxy sends it.
func TestProxyStatusNamesNodeAndSVIDExpiry(t *testing.T) {
	m := startMesh(t, answerWeb)
	defer m.stopApps()
	cfg := m.web
	cfg.Node = "rack-7.example"
	web := runProxy(t, cfg)
	defer web.stop(t, "proxy")
	trellistest.Eventually(t, 20*time.Second, "the proxy's status names its node and SVID expiry", func() error {
		ps, err := m.api.Proxies(t.Context())
		if err != nil {
			return err
		}
		for _, p := range ps {
			if p.Instance != "web-1" {
				continue
			}
			if p.Node != "rack-7.example" || p.SVIDExpiresAt == nil || time.Until(*p.SVIDExpiresAt) < 23*time.Hour {
				return fmt.Errorf("status %+v: want node rack-7.example and an SVID expiry about 24 h ahead", p)
			}
			return nil
		}
		return fmt.Errorf("no status for web-1 in %+v", ps)
	})
}

// Sessions live in the store: one another server made (written straight
// to the store here) is honoured, and one it ended (deleted there) ends
// here too. The store holds neither the session's ID nor the token.
func TestSessionsAreSharedThroughTheStore(t *testing.T) {
	d := startDashServer(t)
	ctx := t.Context()
	cookie, info := d.login(t, d.admin)
	key, err := parseSessionID(cookie.Value)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := d.srv.store.Get(ctx, sessionKey(key))
	if err != nil {
		t.Fatalf("the login's session is not in the store: %v", err)
	}
	if v := string(kv.Value); strings.Contains(v, cookie.Value) || strings.Contains(v, d.admin) || !strings.Contains(v, info.CSRF) {
		t.Errorf("stored session %s: want its CSRF token, not its ID or the token", v)
	}

	// Another server's session, for the same token.
	var rec sessionRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		t.Fatal(err)
	}
	otherID, _ := randomID()
	otherKey, _ := parseSessionID(otherID)
	rec.CSRF, rec.Lease = "other-csrf", 0
	b, _ := json.Marshal(rec)
	if err := d.srv.store.Put(ctx, sessionKey(otherKey), b, 0); err != nil {
		t.Fatal(err)
	}
	other := &http.Cookie{Name: sessionCookie, Value: otherID}
	if a := d.do(t, req{method: "GET", path: "/ui/session", cookie: other}); a.code != 200 || !strings.Contains(a.body, "other-csrf") {
		t.Fatalf("a session made by another server: %v", a)
	}
	// Ended by the other server.
	if err := d.srv.store.Delete(ctx, sessionKey(otherKey)); err != nil {
		t.Fatal(err)
	}
	trellistest.Eventually(t, 5*time.Second, "a session ended in the store is refused", func() error {
		if a := d.do(t, req{method: "GET", path: "/v1/services", cookie: other}); a.code != 401 {
			return fmt.Errorf("got %v", a)
		}
		return nil
	})
	// Logout here removes the record, lease and all.
	if a := d.do(t, req{method: "POST", path: "/ui/logout", cookie: cookie, origin: "self", csrf: info.CSRF}); a.code != 200 {
		t.Fatalf("logout: %v", a)
	}
	if _, err := d.srv.store.Get(ctx, sessionKey(key)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("after logout the store still holds the session: %v", err)
	}
}

// Every answer of the API port carries the security headers, whatever
// answers it: the API, its errors, the mux's own 404, 405 and redirects,
// the peer endpoint, the static assets.
func TestSecurityHeadersOnEveryResponse(t *testing.T) {
	d := startDashServer(t)
	hc := *d.hc
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, tc := range []struct {
		method, path string
		bearer       bool
		code         int
	}{
		{"GET", "/v1/services", true, 200},
		{"GET", "/v1/services", false, 401},
		{"GET", "/v1/no-such-api", true, 404},
		{"GET", "/no-such-page", false, 404},
		{"PUT", "/ui/login", false, 405},
		{"GET", "/ui", false, 301},
		{"GET", "/", false, 302},
		{"POST", pushPath, false, 401},
		{"GET", "/ui/app.js", false, 200},
		{"HEAD", "/ui/", false, 200},
		{"GET", "/metrics", false, 200},
	} {
		hr, _ := http.NewRequestWithContext(t.Context(), tc.method, d.base+tc.path, nil)
		if tc.bearer {
			hr.Header.Set("Authorization", "Bearer "+d.admin)
		}
		resp, err := hc.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h := resp.Header
		if resp.StatusCode != tc.code {
			t.Errorf("%s %s: got %d, want %d", tc.method, tc.path, resp.StatusCode, tc.code)
		}
		if got := h.Get("Content-Security-Policy"); got != contentSecurityPolicy {
			t.Errorf("%s %s (%d): Content-Security-Policy %q, want the dashboard's", tc.method, tc.path, resp.StatusCode, got)
		}
		if h.Get("X-Content-Type-Options") != "nosniff" || h.Get("X-Frame-Options") != "DENY" || h.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("%s %s (%d): headers %v lack nosniff, DENY or no-referrer", tc.method, tc.path, resp.StatusCode, h)
		}
	}
}
