package control

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// Bad stats queries are refused with 400, naming the parameter.
func TestStatsQueryRefusesBadParameters(t *testing.T) {
	tests := []struct {
		query, want string
	}{
		{"window=30s", `query parameter window: "30s" is not between 1m0s and 15m0s`},
		{"window=16m", `query parameter window: "16m" is not between`},
		{"window=soon", `query parameter window: "soon" is not a duration`},
		{"window=", `query parameter window: "" is not a duration`},
		{"window=1m&window=5m", "query parameter window: given 2 times"},
		{"service=Not_A_Name", "query parameter service:"},
		{"service=", "query parameter service:"},
		{"services=web", `query parameter "services": unknown (want window or service)`},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			_, err := statsQuery(httptest.NewRequest(http.MethodGet, "/v1/stats?"+tt.query, nil))
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != http.StatusBadRequest {
				t.Fatalf("got %v, want a 400", err)
			}
			if !strings.Contains(ae.msg, tt.want) {
				t.Errorf("got %q, want it to contain %q", ae.msg, tt.want)
			}
		})
	}
	q, err := statsQuery(httptest.NewRequest(http.MethodGet, "/v1/stats?window=5m&service=web", nil))
	if err != nil || q.Window != 5*time.Minute || q.Service != "web" {
		t.Errorf("good query: got %+v, %v; want 5m and web", q, err)
	}
	q, err = statsQuery(httptest.NewRequest(http.MethodGet, "/v1/stats", nil))
	if err != nil || q.Window != time.Minute || q.Service != "" {
		t.Errorf("no parameters: got %+v, %v; want 1m, all services", q, err)
	}
}
