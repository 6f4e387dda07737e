package control

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/dashboard"
	"github.com/trellis-mesh/trellis/internal/store"
)

// Dashboard sessions. A person logs in with a token (admin or viewer) and
// gets a session: a random ID in a cookie the page's script cannot read
// (HttpOnly), sent only over HTTPS (Secure) and only by pages of this
// origin (SameSite=Strict; the __Host- prefix forbids a Domain and needs
// Path=/). The servers keep the session, never the token's secret; the
// session lives until logout, a new login from the same browser (which
// ends the session its cookie names), its expiry (sessionTTL, or the
// token's expiry if sooner) or the token's revocation, checked on every
// request.
// Every write made with a session also carries the session's CSRF token
// in csrfHeader, which only the page's own script can have read (from
// GET /ui/session), and comes from this origin (Origin, Sec-Fetch-Site).
//
// Sessions are in the store (keySessions, by the hash of their ID, each
// under a lease that ends with it), mirrored by every server: behind a
// load balancer, any server answers a session any other made, and a
// logout on one ends it on all.
const (
	sessionCookie = "__Host-trellis-session"
	csrfHeader    = "X-Trellis-Csrf"
	// sessionTTL bounds a session's life, whatever its token's.
	sessionTTL = 12 * time.Hour
	// maxSessions bounds the sessions in the store (expired ones leave
	// with their lease); past it, a login is refused (503).
	maxSessions = 4096
	// sessionIDBytes of randomness in a session ID and a CSRF token.
	sessionIDBytes = 32
	// maxLoginBody bounds a login request: a token and some JSON.
	maxLoginBody = 4 << 10
)

// Failed logins from one address are limited: loginBurst at once, then one
// per loginEvery. A success costs nothing.
const (
	loginBurst       = 10
	loginEvery       = 6 * time.Second
	maxLoginLimiters = 4096
)

// sessionIDLen is the length of an encoded session ID.
var sessionIDLen = base64.RawURLEncoding.EncodedLen(sessionIDBytes)

// sessionRecord is what keySessions/<hash of the ID> holds: never the ID
// or the token's secret.
type sessionRecord struct {
	// TokenHash is the store key's part of the token the session was
	// made with.
	TokenHash string    `json:"tokenHash"`
	CSRF      string    `json:"csrf"`
	ExpiresAt time.Time `json:"expiresAt"`
	// Lease holds the record; revoking it ends the session.
	Lease store.LeaseID `json:"lease"`
}

// session is one logged-in browser, as a request finds it.
type session struct {
	key     string // the hash of its ID
	p       principal
	csrf    string
	expires time.Time
	lease   store.LeaseID
}

// sessions holds this server's failed-login limiters. Its lock is held
// only for map operations.
type sessions struct {
	mu       sync.Mutex
	failures map[string]*rate.Limiter // remote IP -> failed logins
}

func newSessions() *sessions {
	return &sessions{failures: map[string]*rate.Limiter{}}
}

// sessionInfo is the answer of POST /ui/login and GET /ui/session.
type sessionInfo struct {
	// Role is admin or viewer.
	Role string `json:"role"`
	// TokenID and Description name the token the session was made with.
	TokenID     string `json:"tokenId"`
	Description string `json:"description,omitempty"`
	// ExpiresAt is when the session ends at the latest.
	ExpiresAt time.Time `json:"expiresAt"`
	// CSRF goes in the X-Trellis-Csrf header of every write.
	CSRF string `json:"csrf"`
}

// loginRequest is the body of POST /ui/login.
type loginRequest struct {
	Token string `json:"token"`
}

// parseLogin decodes a login body: one JSON object with the token, nothing
// else.
func parseLogin(body []byte) (string, error) {
	var req loginRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return "", fmt.Errorf("login body: want {\"token\": \"...\"}: %v", err)
	}
	if dec.More() {
		return "", errors.New("login body: want one JSON object")
	}
	secret := strings.TrimSpace(req.Token)
	if secret == "" {
		return "", errors.New("login body: token is empty")
	}
	return secret, nil
}

// parseSessionID checks a session cookie's value and returns the key it is
// kept under: the hex SHA-256 of the ID, so that the map's keys, and the
// time a lookup takes, tell nothing about live IDs.
func parseSessionID(v string) (string, error) {
	if len(v) != sessionIDLen {
		return "", fmt.Errorf("session cookie: %d characters, want %d", len(v), sessionIDLen)
	}
	if _, err := base64.RawURLEncoding.Strict().DecodeString(v); err != nil {
		return "", errors.New("session cookie: not a session ID")
	}
	sum := sha256.Sum256([]byte(v))
	return hex.EncodeToString(sum[:]), nil
}

func randomID() (string, error) {
	b := make([]byte, sessionIDBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("session randomness: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// readMethod reports a method that changes nothing.
func readMethod(m string) bool { return m == http.MethodGet || m == http.MethodHead }

// refusal says why p may not call a handler of access a with method, or
// "" when it may. A viewer's write is refused whatever the handler.
func (p principal) refusal(a access, method string) string {
	if p.isViewer() && !readMethod(method) {
		return "a viewer token is read-only: it cannot change anything (" + method + " refused)"
	}
	switch {
	case a == adminOnly && !p.isAdmin():
		return "this API needs an admin token"
	case a == readers && !p.isAdmin() && !p.isViewer():
		return "this API needs an admin or viewer token"
	}
	return ""
}

// authHTTP authenticates an API request: by its bearer token, or else by
// its dashboard session, whose writes must prove they come from the page.
func (s *Server) authHTTP(r *http.Request) (principal, error) {
	if r.Header.Get("Authorization") != "" {
		return s.authRequest(r)
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return s.authRequest(r) // no token at all: errUnauthenticated
	}
	sess, err := s.session(r.Context(), c.Value)
	if err != nil {
		return principal{}, err
	}
	if !readMethod(r.Method) {
		if err := checkCSRF(r, sess.csrf); err != nil {
			return sess.p, &apiError{status: http.StatusForbidden, msg: err.Error()}
		}
	}
	return sess.p, nil
}

// session returns the live session with cookie value v. An expired one,
// or one whose token was revoked or expired, is ended here.
func (s *Server) session(ctx context.Context, v string) (*session, error) {
	key, err := parseSessionID(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUnauthenticated, err)
	}
	rec, ok := s.sessionRecord(ctx, key)
	if !ok {
		return nil, fmt.Errorf("%w: no such session (log in again)", errUnauthenticated)
	}
	why := ""
	p, err := s.sessionPrincipal(ctx, rec)
	switch {
	case !time.Now().Before(rec.ExpiresAt):
		why = "session expired"
	case err != nil:
		why = "session ended: " + err.Error()
	}
	sess := &session{key: key, p: p, csrf: rec.CSRF, expires: rec.ExpiresAt, lease: rec.Lease}
	if why != "" {
		if err := s.endSession(ctx, sess); err != nil {
			s.log.Warn("end dashboard session", "err", err)
		}
		return nil, fmt.Errorf("%w: %s (log in again)", errUnauthenticated, why)
	}
	return sess, nil
}

// endSession removes a session from the store (revoking its lease) and, at
// once, from this server's mirror; the others' mirrors follow the watch.
func (s *Server) endSession(ctx context.Context, sess *session) error {
	s.state.setSession(sess.key, nil)
	if err := s.store.Revoke(ctx, sess.lease); err != nil {
		return err
	}
	// A record without its lease (written by hand) goes too.
	if err := s.store.Delete(ctx, sessionKey(sess.key)); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}

// sessionRecord finds a session in the mirror, or (one made a moment ago
// on another server) in the store, within the budget of store reads that
// guessed tokens share: a made-up cookie costs no more than a guessed
// token.
func (s *Server) sessionRecord(ctx context.Context, key string) (sessionRecord, bool) {
	rec, ok, _ := s.state.session(key)
	if ok || !s.storeLookups.Allow() {
		return rec, ok
	}
	kv, err := s.store.Get(ctx, sessionKey(key))
	if err != nil || json.Unmarshal(kv.Value, &rec) != nil {
		return sessionRecord{}, false
	}
	return rec, true
}

// sessionPrincipal is the token behind a session, if it still stands.
func (s *Server) sessionPrincipal(ctx context.Context, rec sessionRecord) (principal, error) {
	t, ok := s.state.token(rec.TokenHash)
	if !ok {
		kv, err := s.store.Get(ctx, tokenKey(rec.TokenHash))
		if errors.Is(err, store.ErrNotFound) {
			return principal{}, errors.New("its token was revoked")
		}
		if err != nil {
			return principal{}, fmt.Errorf("look up its token: %w", err)
		}
		if err := json.Unmarshal(kv.Value, &t); err != nil {
			return principal{}, fmt.Errorf("decode its token: %w", err)
		}
	}
	if t.Expired(time.Now()) {
		return principal{}, fmt.Errorf("its token %s expired", t.ID)
	}
	return principal{token: t.Token, hash: rec.TokenHash}, nil
}

// checkCSRF makes sure a write made with a session comes from the page:
// from this origin, with the session's CSRF token.
func checkCSRF(r *http.Request, want string) error {
	if err := sameOrigin(r); err != nil {
		return err
	}
	got := r.Header.Get(csrfHeader)
	if got == "" {
		return fmt.Errorf("a write with a dashboard session needs the %s header", csrfHeader)
	}
	if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return fmt.Errorf("the %s header does not match the session", csrfHeader)
	}
	return nil
}

// sameOrigin requires a browser's request to come from a page of this
// server: an Origin of https://<Host> (browsers send one on every write),
// and a Sec-Fetch-Site, when sent, of same-origin.
func sameOrigin(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return fmt.Errorf("request from another site (Sec-Fetch-Site: %s)", site)
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return errors.New("a write with a dashboard session needs an Origin header")
	}
	if err := checkOrigin(origin, r.Host); err != nil {
		return err
	}
	return nil
}

// checkOrigin compares an Origin header with the request's Host: a
// browser serializes its page's origin as scheme://host[:port], which
// must be this server's, over https.
func checkOrigin(origin, host string) error {
	if !strings.HasPrefix(origin, "https://") {
		return fmt.Errorf("origin %q is not an https origin", origin)
	}
	if host == "" || !strings.EqualFold(origin, "https://"+host) {
		return fmt.Errorf("origin %q is not this server's (https://%s)", origin, host)
	}
	return nil
}

// remoteIP is the address a login is counted against.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// loginLimiter returns ip's failed-login limiter. The map is bounded: when
// full it starts again, which frees, at worst, addresses that had failed
// a few times.
func (d *sessions) loginLimiter(ip string) *rate.Limiter {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.failures[ip]
	if l == nil {
		if len(d.failures) >= maxLoginLimiters {
			d.failures = map[string]*rate.Limiter{}
		}
		l = rate.NewLimiter(rate.Every(loginEvery), loginBurst)
		d.failures[ip] = l
	}
	return l
}

// errTooManySessions: the store holds maxSessions.
var errTooManySessions = fmt.Errorf("the mesh holds %d dashboard sessions, the limit; try again later", maxSessions)

// storeSession writes a new session under a lease that ends with it.
func (s *Server) storeSession(ctx context.Context, key string, sess *session) error {
	if _, _, n := s.state.session(key); n >= maxSessions {
		return errTooManySessions
	}
	// The lease outlives the session by a little: the session's expiry
	// is checked on every request; the lease only clears the store.
	lease, err := s.store.Grant(ctx, time.Until(sess.expires)+time.Minute)
	if err != nil {
		return fmt.Errorf("session lease: %w", err)
	}
	rec := sessionRecord{TokenHash: sess.p.hash, CSRF: sess.csrf, ExpiresAt: sess.expires, Lease: lease}
	b, _ := json.Marshal(rec)
	if err := s.store.Put(ctx, sessionKey(key), b, lease); err != nil {
		return fmt.Errorf("store session: %w", err)
	}
	// This server knows it at once; the watch brings the same record.
	s.state.setSession(key, &rec)
	return nil
}

// dashboardRoutes adds the dashboard: its pages and the session endpoints.
func (s *Server) dashboardRoutes(mux *http.ServeMux) {
	pages := dashboardPages()
	mux.Handle("GET /ui/", pages)
	mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusFound))
	// Security headers wrap the whole mux (api.go).
	mux.Handle("POST /ui/login", s.writeDeadline(http.HandlerFunc(s.login)))
	mux.Handle("POST /ui/logout", s.writeDeadline(http.HandlerFunc(s.logout)))
	mux.HandleFunc("GET /ui/session", s.currentSession)
}

// writeDeadline gives a dashboard write the API writes' deadline. Its
// outcome needs no fence: a login answered as failed whose session is
// stored later hands nobody the session's ID (it expires with its lease),
// and a logout answered as failed that lands later only ends the session
// sooner.
func (s *Server) writeDeadline(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.writeTimeout())
		defer cancel()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// contentSecurityPolicy lets the page load its own script, style and
// images and call its own origin, and nothing else: no inline script or
// style, no frame around it, no form posted elsewhere.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// secureHeaders adds the dashboard's security headers to h's answers. It
// wraps the whole API port (routes), not the pages alone: an error, a
// 404, a 405 or a redirect of the mux, a JSON answer opened in a tab, are
// documents of the dashboard's origin too.
func secureHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		hd.Set("Cross-Origin-Resource-Policy", "same-origin")
		hd.Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

// login exchanges an admin or viewer token for a session.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	ip := remoteIP(r)
	refuse := func(code int, why string, counted bool) {
		if counted {
			s.dash.loginLimiter(ip).Allow()
		}
		s.metrics.api.WithLabelValues(fmt.Sprint(code)).Inc()
		s.logRefusal("dashboard login refused", "remote", r.RemoteAddr, "reason", why)
		writeJSON(w, code, map[string]string{"error": why})
	}
	if err := sameOrigin(r); err != nil {
		refuse(http.StatusForbidden, err.Error(), false)
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		refuse(http.StatusUnsupportedMediaType, "login body: want Content-Type application/json", false)
		return
	}
	if l := s.dash.loginLimiter(ip); l.Tokens() < 1 {
		wait := time.Duration((1 - l.Tokens()) * float64(loginEvery)).Round(time.Second)
		w.Header().Set("Retry-After", fmt.Sprint(int(wait.Seconds())+1))
		refuse(http.StatusTooManyRequests, fmt.Sprintf("too many failed logins from %s; try again in %v", ip, wait+time.Second), false)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxLoginBody))
	if err != nil {
		refuse(http.StatusBadRequest, fmt.Sprintf("login body: %v", err), true)
		return
	}
	secret, err := parseLogin(body)
	if err != nil {
		refuse(http.StatusBadRequest, err.Error(), true)
		return
	}
	p, err := s.authenticate(r.Context(), secret)
	if err != nil {
		refuse(http.StatusUnauthorized, err.Error(), true)
		return
	}
	if !p.isAdmin() && !p.isViewer() {
		refuse(http.StatusForbidden, fmt.Sprintf("token %s is a service token: log in with an admin or viewer token", p.token.ID), true)
		return
	}
	// A browser that logs in again while its session cookie is live is
	// given a new cookie: end the old session first, or its ID would stay
	// valid (for whoever else holds it) until it expires. Failing that,
	// refuse the login, which leaves the browser as it was.
	if c, err := r.Cookie(sessionCookie); err == nil {
		if old, err := s.session(r.Context(), c.Value); err == nil {
			if err := s.endSession(r.Context(), old); err != nil {
				s.log.Error("dashboard login: end the previous session", "remote", r.RemoteAddr, "err", err)
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": fmt.Sprintf("end the previous session: %v", err)})
				return
			}
			s.log.Info("dashboard session replaced by a new login", "remote", r.RemoteAddr, "token", old.p)
		}
	}
	id, err := randomID()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	csrf, err := randomID()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	sess := &session{p: p, csrf: csrf, expires: time.Now().Add(sessionTTL).UTC().Truncate(time.Second)}
	if e := p.token.ExpiresAt; e != nil && e.Before(sess.expires) {
		sess.expires = *e
	}
	key, _ := parseSessionID(id)
	if err := s.storeSession(r.Context(), key, sess); err != nil {
		if !errors.Is(err, errTooManySessions) {
			s.log.Error("dashboard login", "remote", r.RemoteAddr, "err", err)
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: id, Path: "/",
		Expires: sess.expires, MaxAge: int(time.Until(sess.expires).Seconds()),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode,
	})
	s.log.Info("dashboard login", "remote", r.RemoteAddr, "token", p, "role", sessionRole(p), "expires", sess.expires)
	writeJSON(w, http.StatusOK, sess.info())
}

func sessionRole(p principal) string {
	if p.isAdmin() {
		return "admin"
	}
	return "viewer"
}

func (sess *session) info() sessionInfo {
	return sessionInfo{Role: sessionRole(sess.p), TokenID: sess.p.token.ID, Description: sess.p.token.Description, ExpiresAt: sess.expires, CSRF: sess.csrf}
}

// currentSession answers the page, when it loads, with its session (and
// the CSRF token its writes need), or 401.
func (s *Server) currentSession(w http.ResponseWriter, r *http.Request) {
	if sess := s.cookieSession(w, r); sess != nil {
		writeJSON(w, http.StatusOK, sess.info())
	}
}

// cookieSession returns the live session r's cookie names, or answers 401
// and returns nil. Its answers are never cached.
func (s *Server) cookieSession(w http.ResponseWriter, r *http.Request) *session {
	w.Header().Set("Cache-Control", "no-store")
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "not logged in"})
		return nil
	}
	sess, err := s.session(r.Context(), c.Value)
	if err != nil {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": err.Error()})
		return nil
	}
	return sess
}

// logout ends the session (a write: it needs the CSRF proof, so that no
// other site can log a person out).
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	sess := s.cookieSession(w, r)
	if sess == nil {
		return
	}
	if err := checkCSRF(r, sess.csrf); err != nil {
		s.logRefusal("dashboard logout refused", "remote", r.RemoteAddr, "token", sess.p, "reason", err.Error())
		writeJSON(w, http.StatusForbidden, map[string]string{"error": err.Error()})
		return
	}
	if err := s.endSession(r.Context(), sess); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": fmt.Sprintf("end session: %v", err)})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	s.log.Info("dashboard logout", "remote", r.RemoteAddr, "token", sess.p)
	writeJSON(w, http.StatusOK, map[string]string{"loggedOut": sess.p.token.ID})
}

// dashboardPages serves the embedded pages under /ui/.
func dashboardPages() http.Handler { return dashboard.Handler("/ui/") }

// rootCerts describes the roots of a bundle; a root that does not parse
// (the bundle is checked when written) is left out.
func rootCerts(bundle string) []v1.RootCert {
	roots, _ := ca.ParseCertificates([]byte(bundle))
	out := make([]v1.RootCert, 0, len(roots))
	for _, c := range roots {
		out = append(out, v1.RootCert{Fingerprint: certs.Fingerprint(c), Subject: c.Subject.String(), NotAfter: c.NotAfter})
	}
	return out
}
