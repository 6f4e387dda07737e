//go:build unix

package store

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

func checkPrivate(dir string, fi fs.FileInfo) (fs.FileMode, error) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return 0, fmt.Errorf("data dir %s is owned by uid %d, not by this user (uid %d): %w", dir, st.Uid, os.Geteuid(), ErrDirNotPrivate)
	}
	perm := fi.Mode().Perm()
	if perm&0o022 != 0 {
		return 0, fmt.Errorf("data dir %s has mode %04o: %w: other users may have put files in it that the server would trust; "+
			"check its contents, then run chmod 700 %s", dir, perm, ErrDirNotPrivate, dir)
	}
	if perm&0o077 == 0 {
		return 0, nil
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return 0, fmt.Errorf("data dir %s has mode %04o, open to other users, and cannot be made 0700: %w", dir, perm, err)
	}
	return perm, nil
}
