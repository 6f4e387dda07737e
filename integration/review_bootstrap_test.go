//go:build linux

package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// The server writes the bootstrap admin token to DATA_DIR/admin-token
// and, at every start, stores that file's token again as an admin token
// if it is missing (storeTokenHash treats "exists" as done and "missing"
// as to create). Deleting the bootstrap token, as one would when it
// leaked, lasts until the next restart of any server that has the file:
// then the leaked token is an admin again.
func TestReviewRevokedBootstrapAdminComesBack(t *testing.T) {
	s := startServer(t)
	boot := s.admin
	other := strings.TrimSpace(s.mustCLI(t, "token", "create", "--admin"))
	s.admin = other
	s.api = clientFor(t, s, other)
	s.mustCLI(t, "token", "delete", tokenIDByDescription(t, s, "bootstrap admin"))
	if _, err := clientFor(t, s, boot).Tokens(t.Context()); err == nil {
		t.Fatal("the deleted bootstrap token still works before the restart")
	}
	s.proc.kill(syscall.SIGTERM)
	s.proc.run()
	s.waitUp(t)
	trellistest.Eventually(t, 10*time.Second, "server answers", func() error {
		_, err := s.api.Tokens(t.Context())
		return err
	})
	if _, err := clientFor(t, s, boot).Tokens(t.Context()); err == nil {
		t.Error("after a restart the revoked bootstrap admin token is an admin token again")
	}
}

func tokenIDByDescription(t *testing.T, s *server, desc string) string {
	t.Helper()
	for _, line := range strings.Split(s.mustCLI(t, "token", "list"), "\n") {
		if strings.Contains(line, desc) {
			return strings.Fields(line)[0]
		}
	}
	t.Fatalf("no token described %q", desc)
	return ""
}
