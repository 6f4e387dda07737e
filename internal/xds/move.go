package xds

import (
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// movePrefix starts the message of the status a server ends (or refuses) a
// stream with when the proxy should take it to another server at once:
// the server is stopping, cannot reach its store, or rebalances its
// streams. The code is Unavailable, so that a proxy that does not know
// the prefix still retries.
const movePrefix = "move to another server: "

// MoveStatus is the error a server returns to send its proxy elsewhere;
// reason says why, for the proxy's log.
func MoveStatus(reason string) error {
	return status.Error(codes.Unavailable, movePrefix+reason)
}

// MoveReason reports whether err is a MoveStatus, and its reason.
func MoveReason(err error) (string, bool) {
	s, ok := status.FromError(err)
	if !ok || s.Code() != codes.Unavailable {
		return "", false
	}
	return strings.CutPrefix(s.Message(), movePrefix)
}
