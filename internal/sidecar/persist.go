package sidecar

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/topology"
)

// stateFile is the one file in the state dir. It holds the private key, so
// it is written 0600, and atomically (rename), so a crash never leaves a key
// that does not match its certificate.
const stateFile = "proxy-state.json"

type persisted struct {
	ChainPEM string             `json:"chain"`
	KeyPEM   string             `json:"key"`
	Snapshot *topology.Snapshot `json:"snapshot"`
	SavedAt  time.Time          `json:"savedAt"`
}

func saveState(dir string, p persisted) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	p.SavedAt = time.Now().UTC()
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, stateFile+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, stateFile))
}

// loadState returns the persisted state, if it is present, consistent, for
// this service, and its certificate has not expired; nil when there is none.
func loadState(dir, service string, now time.Time) (*tls.Certificate, *persisted, error) {
	if dir == "" {
		return nil, nil, nil
	}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, nil, fmt.Errorf("decode %s: %w", stateFile, err)
	}
	if p.Snapshot == nil || p.Snapshot.Service != service {
		return nil, nil, fmt.Errorf("%s is for another service", stateFile)
	}
	if err := p.Snapshot.Validate(); err != nil {
		return nil, nil, err
	}
	cert, err := certs.KeyPair([]byte(p.ChainPEM), []byte(p.KeyPEM))
	if err != nil {
		return nil, nil, fmt.Errorf("persisted certificate: %w", err)
	}
	if now.After(cert.Leaf.NotAfter) {
		return nil, nil, fmt.Errorf("persisted certificate expired at %v", cert.Leaf.NotAfter)
	}
	return cert, &p, nil
}
