package certs

import (
	"log/slog"
	"os"
)

// WarnIfShared logs a warning when path, a file holding a secret (a token,
// a private key), may be read by users other than its owner. It warns
// rather than refuses: the file may be shared on purpose through a group,
// and a proxy that would not start is worse than one that says so.
func WarnIfShared(log *slog.Logger, what, path string) {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o077 == 0 {
		return
	}
	log.Warn(what+" is readable by other users; chmod 600 it", "file", path, "mode", fi.Mode().Perm().String())
}
