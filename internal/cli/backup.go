//go:build !proxyonly

package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/trellis-mesh/trellis/internal/store"
)

// runBackup saves a snapshot of the server's store, through its API.
func runBackup(ctx context.Context, e *env, args []string) error {
	const usage = "backup FILE"
	fs := newFlags(e, "backup", usage)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageErr("want: %s", usage)
	}
	file := fs.Arg(0)
	c, err := connect(e)
	if err != nil {
		return err
	}
	defer c.CloseIdleConnections()
	// Written whole or not at all, 0600: it holds token hashes and the
	// CA's records.
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("backup: %w", err)
	}
	if _, err := c.Backup(ctx, tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("backup: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("backup: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	info, err := store.InspectSnapshot(tmp.Name())
	if err != nil {
		return fmt.Errorf("backup: the server sent no valid snapshot: %w", err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	fmt.Fprintf(e.stdout, "backup saved to %s: revision %d, %d keys, %d bytes\n", file, info.Revision, info.Keys, info.Bytes)
	return nil
}

// runRestore makes a server's embedded etcd from a backup, offline.
func runRestore(_ context.Context, e *env, args []string) error {
	const usage = "restore FILE --data-dir DIR"
	fs := newFlags(e, "restore", usage)
	dir := fs.String("data-dir", "", "the data dir of the server to restore (a fresh one; the server must not run on it); required")
	// FILE may come before the flags, as the usage shows it.
	var file string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		file, args = args[0], args[1:]
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if file == "" && fs.NArg() == 1 {
		file = fs.Arg(0)
	} else if file == "" || fs.NArg() != 0 {
		return usageErr("want: %s", usage)
	}
	if *dir == "" {
		return usageErr("--data-dir DIR is required")
	}
	info, err := store.InspectSnapshot(file)
	if err != nil {
		return fmt.Errorf("restore: not a backup: %w", err)
	}
	if err := store.RestoreEmbedded(file, *dir); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "restored %s into %s: revision %d, %d keys.\n"+
		"Start the server with --data-dir %s and the same CA: its ca.pem and ca-key.pem (or --ca-cert and --ca-key), and the store secret if the CA is kept in the store.\n",
		file, *dir, info.Revision, info.Keys, *dir)
	return nil
}
