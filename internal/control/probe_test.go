package control

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/store"
)

// A probe that failed counts only if the store applied none of this
// server's writes meanwhile: a slow quorum is not a lost one.
func TestProbeFailed(t *testing.T) {
	began := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	timeout := fmt.Errorf("get: %w", context.DeadlineExceeded)
	for _, tc := range []struct {
		name        string
		err         error
		lastApplied time.Time
		want        bool
	}{
		{"answered", nil, time.Time{}, false},
		{"answered: no such key", fmt.Errorf("get: %w", store.ErrNotFound), time.Time{}, false},
		{"timed out, nothing applied ever", timeout, time.Time{}, true},
		{"timed out, last write long before", timeout, began.Add(-time.Minute), true},
		{"timed out while a write was applied", timeout, began.Add(500 * time.Millisecond), false},
		{"timed out, a write applied just before", timeout, began.Add(-storeProbeInterval / 2), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := probeFailed(tc.err, began, tc.lastApplied); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
