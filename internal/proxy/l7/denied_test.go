package l7

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// An app cannot make a caller's proxy log a policy denial: the marker of
// a proxy's own refusal is never copied from a response it forwards.
func TestDeniedHeaderNotForwarded(t *testing.T) {
	resp := &http.Response{StatusCode: http.StatusForbidden, Header: http.Header{
		DeniedHeader: {"no intention allows a -> b"}, "X-App": {"1"},
	}, Body: io.NopCloser(strings.NewReader("no"))}
	w := httptest.NewRecorder()
	writeResponse(w, httpResponse(resp))
	if got := w.Header().Get(DeniedHeader); got != "" {
		t.Errorf("forwarded %s: %q", DeniedHeader, got)
	}
	if w.Header().Get("X-App") != "1" || w.Code != http.StatusForbidden {
		t.Errorf("the rest of the response changed: %d %v", w.Code, w.Header())
	}

	// A proxy's own refusal carries it.
	w = httptest.NewRecorder()
	refuse(w, &badRequest{http.StatusForbidden, deniedPrefix + "no intention allows a -> b", "no_intention"})
	if got := w.Header().Get(DeniedHeader); got != "no intention allows a -> b" {
		t.Errorf("refusal's %s = %q", DeniedHeader, got)
	}
}
