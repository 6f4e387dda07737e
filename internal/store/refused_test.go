package store

import (
	"context"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Only errors that etcd returns before a write enters its log make the
// write's failure definite; a timeout or a lost connection never does.
func TestRefusedWrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"no leader", rpctypes.ErrNoLeader, true},
		{"no leader, wrapped", fmt.Errorf("commit: %w", rpctypes.ErrNoLeader), true},
		{"too many requests", rpctypes.ErrTooManyRequests, true},
		{"request too large", rpctypes.ErrRequestTooLarge, true},
		{"permission denied", rpctypes.ErrPermissionDenied, true},
		{"lease not found", rpctypes.ErrLeaseNotFound, true},
		{"deadline", context.DeadlineExceeded, false},
		{"canceled", context.Canceled, false},
		{"request timed out (after the proposal)", rpctypes.ErrTimeout, false},
		{"leader failed (after the proposal)", rpctypes.ErrTimeoutDueToLeaderFail, false},
		{"connection lost", status.Error(codes.Unavailable, "error reading from server: connection timed out"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := refusedWrite(tc.err); got != tc.want {
				t.Errorf("refusedWrite(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
