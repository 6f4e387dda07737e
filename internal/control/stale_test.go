package control

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// /healthz answers without a token: while the store is away it says so,
// but not the store's error, which names etcd's addresses, its TLS
// trouble or its login.
func TestHealthzLeaksNoStoreError(t *testing.T) {
	const secretish = "dial tcp 10.9.8.7:2379: connect: connection refused"
	for _, tc := range []struct {
		name     string
		watching bool
		last     time.Duration
		want     string
	}{
		{"watch down", false, 0, "store watch down"},
		{"not reached", true, time.Minute, "store not reached"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newState(slog.New(slog.NewTextHandler(io.Discard, nil)))
			st.contact(time.Now().Add(-tc.last))
			st.watching.Store(tc.watching)
			st.storeFailed(errors.New(secretish))
			s := &Server{state: st, movers: newMovers()}
			w := httptest.NewRecorder()
			s.healthz(w, httptest.NewRequest(http.MethodGet, "/healthz", nil))
			body := w.Body.String()
			if w.Code != http.StatusServiceUnavailable || !strings.Contains(body, tc.want) {
				t.Errorf("got %d %s, want 503 saying %q", w.Code, body, tc.want)
			}
			if strings.Contains(body, "10.9.8.7") || strings.Contains(body, "refused") {
				t.Errorf("/healthz without a token shows the store's error: %s", body)
			}
			// An API answer (to a token) still says why.
			if why := st.staleness(time.Now()); !strings.Contains(why, secretish) {
				t.Errorf("staleness %q lacks the store's error", why)
			}
		})
	}
}
