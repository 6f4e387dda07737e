package control

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/stats"
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

// A stream's summaries are paced, and none says it covers more time than
// passed since the stream's last one (or since it opened): the server
// places a summary by that time, and a longer claim would file counts in
// slots already counted.
func TestSummaryPacing(t *testing.T) {
	opened := time.Unix(1_000_000, 0)
	var p summaryPacer
	sum := func(ms int64) *stats.Summary { return &stats.Summary{IntervalMS: ms} }
	for _, tc := range []struct {
		after   time.Duration // since opened
		claimMS int64
		wantMS  int64 // after pacing; 0: refused
	}{
		{after: 2 * time.Second, claimMS: 600_000, wantMS: 2000}, // ten minutes claimed on a stream 2 s old
		{after: 7 * time.Second, claimMS: 5000, wantMS: 5000},
		{after: 8 * time.Second, claimMS: 5000, wantMS: 1000},
		{after: 8*time.Second + 10*time.Millisecond, claimMS: 1000, wantMS: 10},
		{after: 8*time.Second + 20*time.Millisecond, claimMS: 1000, wantMS: 10},
		{after: 8*time.Second + 30*time.Millisecond, claimMS: 1000, wantMS: 0}, // the burst is spent
		{after: 8*time.Second + 40*time.Millisecond, claimMS: 1000, wantMS: 0},
		{after: 9 * time.Second, claimMS: 1000, wantMS: 980},
	} {
		s := sum(tc.claimMS)
		err := p.pace(s, opened, opened.Add(tc.after))
		switch {
		case tc.wantMS == 0 && err == nil:
			t.Errorf("at %v: accepted, want refused", tc.after)
		case tc.wantMS == 0:
			if !strings.Contains(err.Error(), "faster than one every") {
				t.Errorf("at %v: error %q", tc.after, err)
			}
		case err != nil:
			t.Errorf("at %v: %v", tc.after, err)
		case s.IntervalMS != tc.wantMS:
			t.Errorf("at %v: covers %d ms, want %d", tc.after, s.IntervalMS, tc.wantMS)
		}
	}
}
