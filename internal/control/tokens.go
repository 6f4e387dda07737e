package control

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/store"
)

// tokenPrefix marks Trellis secrets, so that secret scanners can find them.
const tokenPrefix = "trellis_"

// Auth errors, mapped to 401 and 403.
var (
	errUnauthenticated = errors.New("missing or invalid token")
	errForbidden       = errors.New("token does not allow this")
)

// newSecret returns a fresh token secret and its hash.
func newSecret() (secret, hash string, err error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("token randomness: %w", err)
	}
	secret = tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	return secret, hashSecret(secret), nil
}

// hashSecret is how tokens are stored and looked up. The secrets are 192
// random bits, so a fast unsalted hash is as good as a slow one here.
func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// committer commits ops all or none: a store's Commit, or an API write's
// (commitWrite, with its deadline and fence).
type committer func(ctx context.Context, ops []store.Op) error

// createToken stores a new token and returns its secret, shown only once.
func createToken(ctx context.Context, commit committer, t v1.Token) (string, v1.Token, error) {
	for _, s := range t.Services {
		if err := identity.ValidateServiceName(s); err != nil {
			return "", v1.Token{}, err
		}
	}
	if t.Viewer && (t.Admin || len(t.Services) > 0) {
		return "", v1.Token{}, errors.New("a viewer token is read-only: it cannot also be an admin token or act as a service")
	}
	if !t.Admin && !t.Viewer && len(t.Services) == 0 {
		return "", v1.Token{}, errors.New("a service token needs at least one service")
	}
	secret, hash, err := newSecret()
	if err != nil {
		return "", v1.Token{}, err
	}
	t.ID = hash[:12]
	t.CreatedAt = time.Now().UTC().Truncate(time.Second)
	b, _ := json.Marshal(tokenRecord{Token: t})
	if err := commit(ctx, []store.Op{{Key: tokenKey(hash), Value: b, IfRev: -1}}); err != nil {
		return "", v1.Token{}, fmt.Errorf("store token: %w", err)
	}
	return secret, t, nil
}

// errTokenRevoked: a token from a file was accepted once and deleted since.
var errTokenRevoked = errors.New("token was revoked")

// storeTokenHash records an existing secret (an admin token from a file),
// once: the first time, it is stored with a marker that says it was seen
// (keyFileTokens), in one transaction. A token whose marker stands but
// whose record is gone was deleted, most likely because it leaked: it is
// never stored again, whatever file still holds it.
func storeTokenHash(ctx context.Context, st store.Store, secret string, t v1.Token) error {
	hash := hashSecret(secret)
	t.ID = hash[:12]
	t.CreatedAt = time.Now().UTC().Truncate(time.Second)
	b, _ := json.Marshal(tokenRecord{Token: t})
	err := st.Commit(ctx, []store.Op{
		{Key: fileTokenKey(hash), Value: []byte(t.CreatedAt.Format(time.RFC3339)), IfRev: -1},
		{Key: tokenKey(hash), Value: b, IfRev: -1},
	})
	if !errors.Is(err, store.ErrConflict) {
		return err
	}
	// Seen before: still there, or deleted.
	if _, err := st.Get(ctx, tokenKey(hash)); err == nil {
		// A token stored before markers existed gets its marker now, so
		// that deleting it later is for good too.
		return markFileToken(ctx, st, secret)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return fmt.Errorf("%w: token %s", errTokenRevoked, t.ID)
}

// markFileToken records that a token saved to a file was stored, so that
// storeTokenHash never brings it back once deleted.
func markFileToken(ctx context.Context, st store.Store, secret string) error {
	err := st.Create(ctx, fileTokenKey(hashSecret(secret)), []byte(time.Now().UTC().Format(time.RFC3339)))
	if errors.Is(err, store.ErrExists) {
		return nil
	}
	return err
}

// principal is who made a request.
type principal struct {
	token v1.Token
	hash  string // the store key's part; never logged whole
}

// LogValue names the token in logs by its public ID and description.
func (p principal) LogValue() slog.Value {
	if p.hash == "" {
		return slog.StringValue("no valid token")
	}
	return slog.GroupValue(slog.String("id", p.token.ID), slog.String("description", p.token.Description))
}

func (p principal) isAdmin() bool { return p.token.Admin }

// isViewer reports a read-only token's principal: it reads what an admin
// reads, but tokens, and writes nothing.
func (p principal) isViewer() bool { return p.token.Viewer && !p.token.Admin }

// certTTL cuts a certificate's lifetime at the token's expiry: an identity
// obtained with a token does not outlive it. (Deleting a token cannot
// recall what it was issued; its certificates expire within ttl.)
func (p principal) certTTL(ttl time.Duration) time.Duration {
	if p.token.ExpiresAt == nil {
		return ttl
	}
	// At least a second: the CA reads zero as "the default lifetime".
	return max(min(ttl, time.Until(*p.token.ExpiresAt)), time.Second)
}

// mayActAs reports whether the token may obtain the identity of service.
func (p principal) mayActAs(service string) bool {
	return p.token.Admin || slices.Contains(p.token.Services, service)
}

// bearer extracts the token from an Authorization header value.
func bearer(h string) string {
	v, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(v)
}

// authenticate looks the secret up by its hash: in the store's mirror, and,
// for a token made a moment ago that the mirror has not seen yet, in the
// store itself.
func (s *Server) authenticate(ctx context.Context, secret string) (principal, error) {
	if len(secret) < len(tokenPrefix)+16 || len(secret) > len(tokenPrefix)+128 || !strings.HasPrefix(secret, tokenPrefix) {
		return principal{}, errUnauthenticated
	}
	hash := hashSecret(secret)
	t, ok := s.state.token(hash)
	// The store is asked only within a budget: every guessed secret would
	// otherwise cost a store read. Past it, a token made a moment ago
	// waits (a little) for the mirror to see it.
	if !ok {
		if s.storeLookups.Allow() {
			if kv, err := s.store.Get(ctx, tokenKey(hash)); err == nil && json.Unmarshal(kv.Value, &t) == nil {
				t.rev, ok = kv.Rev, true
			}
		} else {
			t, ok = s.waitMirror(ctx, hash)
		}
	}
	// The lookup is by hash, which leaks nothing about the secret.
	if !ok {
		return principal{}, errUnauthenticated
	}
	if t.Expired(time.Now()) {
		return principal{}, fmt.Errorf("%w: token %s expired at %s", errUnauthenticated, t.ID, t.ExpiresAt.Format(time.RFC3339))
	}
	s.markUsed(hash, t)
	return principal{token: t.Token, hash: hash}, nil
}

// mirrorWait bounds how long a token lookup over the store budget waits
// for the mirror.
const mirrorWait = 200 * time.Millisecond

// waitMirror waits for the mirror to hold the token, for mirrorWait at
// most: its watch delivers a token made a moment ago within milliseconds.
func (s *Server) waitMirror(ctx context.Context, hash string) (tokenRecord, bool) {
	timeout := time.NewTimer(mirrorWait)
	defer timeout.Stop()
	for {
		changed := s.state.TokensChanged()
		if t, ok := s.state.token(hash); ok {
			return t, true
		}
		select {
		case <-changed:
		case <-timeout.C:
			return tokenRecord{}, false
		case <-ctx.Done():
			return tokenRecord{}, false
		}
	}
}

// usedEvery is how stale a token's last-used time may get: writing it on
// every request would make each API call and stream a store write.
const usedEvery = time.Minute

// markUsed records that the token authenticated just now, at most once per
// usedEvery, in the background. The write is conditional on the record's
// revision, so that it never brings back a token deleted meanwhile.
func (s *Server) markUsed(hash string, t tokenRecord) {
	now := time.Now().UTC()
	if t.LastUsedAt != nil && now.Sub(*t.LastUsedAt) < usedEvery || t.rev == 0 {
		return
	}
	s.usedMu.Lock()
	if last, ok := s.usedWrites[hash]; ok && now.Sub(last) < usedEvery {
		s.usedMu.Unlock()
		return
	}
	s.usedWrites[hash] = now
	s.usedMu.Unlock()
	t.LastUsedAt = &now
	b, _ := json.Marshal(t)
	s.goBackground(func() {
		ctx, cancel := context.WithTimeout(s.bgCtx, 5*time.Second)
		defer cancel()
		err := s.store.Commit(ctx, []store.Op{{Key: tokenKey(hash), Value: b, IfRev: t.rev}})
		if err != nil && !errors.Is(err, store.ErrConflict) {
			s.log.Debug("record token use", "token", t.ID, "err", err)
		}
	})
}

// tokenStands reports whether the token behind p is still stored and
// unexpired: a stream checks it whenever tokens change. A token missing
// from the mirror is looked up in the store, which has the last word (the
// mirror may not have seen a token made a moment ago); a store that does
// not answer ends no stream.
func (s *Server) tokenStands(ctx context.Context, p principal) error {
	t, ok := s.state.token(p.hash)
	if !ok {
		kv, err := s.store.Get(ctx, tokenKey(p.hash))
		switch {
		case errors.Is(err, store.ErrNotFound):
			return fmt.Errorf("token %s was revoked", p.token.ID)
		case err != nil:
			return nil
		}
		if json.Unmarshal(kv.Value, &t) != nil {
			return nil
		}
	}
	if t.Expired(time.Now()) {
		return fmt.Errorf("token %s expired", p.token.ID)
	}
	return nil
}

// staleCheck bounds the store read that confirms a token on a server
// whose mirror may be behind (tokenStillStored).
const staleCheck = 2 * time.Second

// tokenStillStored asks the store, when this server's mirror may be
// behind it (its watch is down, or the store went unanswered), whether
// p's token is still there: a token revoked through another server while
// this one did not hear must not obtain a certificate (an identity for up
// to a day) nor register an instance. A store that does not answer either
// is not a refusal: the server keeps signing through a store outage
// (docs/operations.md), and what it cannot know it logs. A fresh mirror
// costs no read.
func (s *Server) tokenStillStored(ctx context.Context, p principal) error {
	if p.hash == "" || s.state.staleSince(time.Now()) == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(store.RequireLeader(ctx), staleCheck)
	defer cancel()
	kv, err := s.store.Get(ctx, tokenKey(p.hash))
	switch {
	case errors.Is(err, store.ErrNotFound):
		return &apiError{status: http.StatusUnauthorized, msg: fmt.Sprintf("%v: token %s was revoked", errUnauthenticated, p.token.ID)}
	case err != nil:
		s.log.Warn("stale view: token not confirmed by the store", "token", p.token.ID, "err", err)
		return nil
	}
	var t tokenRecord
	if err := json.Unmarshal(kv.Value, &t); err == nil && t.Expired(time.Now()) {
		return &apiError{status: http.StatusUnauthorized, msg: fmt.Sprintf("%v: token %s expired", errUnauthenticated, p.token.ID)}
	}
	return nil
}

func (s *Server) authRequest(r *http.Request) (principal, error) {
	return s.authenticate(r.Context(), bearer(r.Header.Get("Authorization")))
}
