//go:build linux

package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Issue 17 item 4: `trellis ca rotate` switches the issuer only once every
// proxy has acknowledged a snapshot that trusts the new root. A frozen
// proxy (SIGSTOP: its stream open, nothing acknowledged) holds the switch
// back, is named, and the old key keeps signing; thawed, the rotation
// resumes and switches.
func TestRotationWaitsForEveryProxy(t *testing.T) {
	s := startServer(t)
	web := startApp(t, "web")
	p := s.startProxy(t, proxyOpts{service: "web", appPort: web.port})
	s.waitInstances(t, 10*time.Second, "web registered", "web", 1)

	p.cmd.Process.Signal(syscall.SIGSTOP)
	defer p.cmd.Process.Signal(syscall.SIGCONT)
	out, code := s.cli(t, "ca", "rotate", "--ack-timeout", "2s", "--poll", "100ms")
	if code == 0 || !strings.Contains(out, "did not acknowledge the new root") || !strings.Contains(out, "web/") {
		t.Fatalf("ca rotate with a frozen proxy: exit %d, want a refusal naming web's proxy:\n%s", code, out)
	}
	// No switch: the old key still signs.
	r, err := s.api.Rotation(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if r.Phase != v1.RotationPrepared || len(r.Waiting) != 1 {
		t.Fatalf("rotation after the refusal: phase %q, waiting %v; want %q with web's proxy waiting", r.Phase, r.Waiting, v1.RotationPrepared)
	}

	p.cmd.Process.Signal(syscall.SIGCONT)
	p.waitReady(t)
	out, code = s.cli(t, "ca", "rotate", "--ack-timeout", "30s", "--poll", "100ms", "--no-retire")
	if code != 0 || !strings.Contains(out, "resuming the rotation") || !strings.Contains(out, "the servers sign with the new key") {
		t.Fatalf("ca rotate once the proxy is back: exit %d:\n%s", code, out)
	}
}
