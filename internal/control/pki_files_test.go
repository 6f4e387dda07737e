package control

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
)

// A data dir whose CA certificate and key do not belong together (a
// rotation cut off between its two files) is refused with both files
// named, not with a bare parse error.
func TestLoadCARefusesMismatchedPair(t *testing.T) {
	dir := t.TempDir()
	cert1, _, err := ca.Generate("trellis.local", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, key2, err := ca.Generate("trellis.local", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "ca.pem"), cert1, 0o644)
	os.WriteFile(filepath.Join(dir, "ca-key.pem"), key2, 0o600)
	s := &Server{cfg: Config{DataDir: dir, TrustDomain: "trellis.local"}, log: slog.New(slog.DiscardHandler)}
	_, err = s.loadDataDirCA()
	if err == nil || !strings.Contains(err.Error(), "ca.pem") || !strings.Contains(err.Error(), "ca-key.pem") {
		t.Fatalf("loadDataDirCA: %v, want an error naming both files", err)
	}
}

// writeFileAtomic leaves the old file whole when the new one cannot be
// written.
func TestWriteFileAtomicKeepsTheOldFile(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "ca-key.pem")
	if err := writeFileAtomic(name, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The temporary file's place is taken by a directory: the write fails.
	if err := os.Mkdir(name+".tmp", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(name, []byte("new"), 0o600); err == nil {
		t.Fatal("write succeeded")
	}
	if b, _ := os.ReadFile(name); string(b) != "old" {
		t.Fatalf("the file holds %q after a failed write, want the old content", b)
	}
}
