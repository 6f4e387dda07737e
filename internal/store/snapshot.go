package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
)

// Snapshot streams a point-in-time snapshot of the whole etcd keyspace
// (every prefix, not only this store's), as etcdctl snapshot save takes
// one: a bbolt database with its SHA-256 appended, which RestoreEmbedded
// and etcdutl snapshot restore verify.
func (e *Etcd) Snapshot(ctx context.Context) (io.ReadCloser, error) {
	r, err := e.c.SnapshotWithVersion(ctx)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return r.Snapshot, nil
}

// SnapshotInfo describes a snapshot file.
type SnapshotInfo struct {
	Revision int64
	Keys     int
	Bytes    int64
}

// InspectSnapshot reads a snapshot file's revision and key count, which
// fails unless it is an etcd database.
func InspectSnapshot(file string) (SnapshotInfo, error) {
	st, err := snapshot.NewV3(zap.NewNop()).Status(file)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot %s: %w", file, err)
	}
	return SnapshotInfo{Revision: st.Revision, Keys: st.TotalKey, Bytes: st.TotalSize}, nil
}

// RestoreEmbedded makes, from a snapshot file, the embedded etcd of a
// server whose data dir is dir: offline, into a dir that holds no etcd yet
// (a fresh one, or one whose etcd was moved away). The snapshot's hash is
// verified. The server started on dir afterwards serves what the snapshot
// held; its CA and admin token files are not in the store (see
// docs/operations.md).
func RestoreEmbedded(file, dir string) error {
	if _, err := PrivateDir(dir); err != nil {
		return err
	}
	out := filepath.Join(dir, "etcd")
	if _, err := os.Stat(out); err == nil {
		return fmt.Errorf("restore into %s: it exists; restore into a fresh data dir, or move it away first", out)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("restore: %w", err)
	}
	// The member's name is the embedded etcd's; its peer URL is a
	// placeholder, as every start of the embedded etcd picks new ports.
	const peer = "https://127.0.0.1:2380"
	err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
		SnapshotPath:        file,
		Name:                embeddedName,
		OutputDataDir:       out,
		PeerURLs:            []string{peer},
		InitialCluster:      embeddedName + "=" + peer,
		InitialClusterToken: "trellis-restore",
	})
	if err != nil {
		os.RemoveAll(out) // nothing half-restored is left to start on
		return fmt.Errorf("restore %s into %s: %w", file, out, err)
	}
	return nil
}
