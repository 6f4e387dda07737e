package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// ErrDirNotPrivate is returned (wrapped) for a data dir that other users
// own or may write to.
var ErrDirNotPrivate = errors.New("not private to this user")

// PrivateDir makes sure dir exists and is the current user's alone, and
// returns its former mode when it had to tighten it (zero otherwise).
//
// A missing dir is created 0700. An existing one that group or others may
// only read or enter is set to 0700: the secrets in it are files of mode
// 0600, so tightening the dir loses nothing, and the caller should say that
// it did. One that another user owns, or that group or others may write to,
// is refused: someone else may have planted files in it (a CA key, an admin
// token) that the server would trust.
func PrivateDir(dir string) (fs.FileMode, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("data dir %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, fmt.Errorf("data dir %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return 0, fmt.Errorf("data dir %s: not a directory", dir)
	}
	return checkPrivate(dir, fi)
}
