package certs

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A token or key file others may read is named in a warning; one only its
// owner reads, or one that is not there, is not.
func TestWarnIfShared(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		mode os.FileMode // 0: no file
		warn bool
	}{
		{"owner only", 0o600, false},
		{"group reads", 0o640, true},
		{"world reads", 0o644, true},
		{"others write", 0o602, true},
		{"missing", 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			if tt.mode != 0 {
				if err := os.WriteFile(path, []byte("trellis_s3cr3t"), tt.mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, tt.mode); err != nil { // past the umask
					t.Fatal(err)
				}
			}
			var out bytes.Buffer
			WarnIfShared(slog.New(slog.NewTextHandler(&out, nil)), "token file", path)
			got := out.String()
			if warned := strings.Contains(got, "token file is readable by other users") && strings.Contains(got, path); warned != tt.warn {
				t.Errorf("got log %q, want a warning naming the file: %v", got, tt.warn)
			}
			if strings.Contains(got, "trellis_s3cr3t") {
				t.Errorf("the log quotes the file's content: %q", got)
			}
		})
	}
}
