//go:build linux

package integration

import (
	"context"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Between a rotation's prepare and its switch, the new root can be taken
// out of the trust bundle: remove-root only guards the root that signs
// now. The switch then goes ahead (nothing waits when no proxy is
// connected, and --force skips the wait anyway) and the servers sign with
// a key whose own root the bundle lacks; only the cross-signed
// certificate keeps their leaves verifying, and retirement, which drops
// it, would cut every new SVID off (it is refused today only while the
// old root is the bundle's last). The root a prepared or active rotation
// will sign with must stay in the bundle.
func TestReviewRemoveNewRootMidRotation(t *testing.T) {
	s := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rot, err := s.api.Rotate(ctx, v1.RotationRequest{Action: "prepare"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.api.RemoveRoot(ctx, v1.RemoveRootRequest{Fingerprint: rot.NewRoot}); err == nil {
		st, _ := s.api.Rotation(ctx)
		t.Errorf("removed the new root %s of a %s rotation from the bundle", rot.NewRoot[:16], st.Phase)
		if st, err := s.api.Rotate(ctx, v1.RotationRequest{Action: "switch"}); err == nil {
			t.Errorf("and the switch went ahead (phase %s): the servers sign under a root the bundle lacks", st.Phase)
		}
	}
}
