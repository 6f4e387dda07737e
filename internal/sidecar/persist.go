package sidecar

import (
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/topology"
)

// stateFile is the state dir's main file. It holds the private key, so
// it is written 0600, and atomically (rename), so a crash never leaves a key
// that does not match its certificate.
const stateFile = "proxy-state.json"

// claimFile holds the proxy's registration claim (0600, like the key): a
// proxy restarted on the same state dir shows the servers the claim its
// registration was made with and takes it back at once, instead of
// waiting out the registration grace of its former self.
const claimFile = "claim"

type persisted struct {
	ChainPEM string             `json:"chain"`
	KeyPEM   string             `json:"key"`
	Snapshot *topology.Snapshot `json:"snapshot"`
	SavedAt  time.Time          `json:"savedAt"`
	// PublicPort is the port the public listener had: a restart with
	// --public-port 0 takes it again when it is free, so that callers
	// holding the old endpoint still reach this instance.
	PublicPort int `json:"publicPort,omitempty"`
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
// Every error names the file, so that an operator sees which one to look at.
func loadState(dir, service string, now time.Time) (*tls.Certificate, *persisted, error) {
	if dir == "" {
		return nil, nil, nil
	}
	path := filepath.Join(dir, stateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, nil, fmt.Errorf("decode %s: %w", path, err)
	}
	if p.Snapshot == nil || p.Snapshot.Service != service {
		return nil, nil, fmt.Errorf("%s is for another service", path)
	}
	if err := p.Snapshot.Validate(); err != nil {
		return nil, nil, fmt.Errorf("%s: snapshot: %w", path, err)
	}
	if err := matchingKey([]byte(p.ChainPEM), []byte(p.KeyPEM)); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	cert, err := certs.KeyPair([]byte(p.ChainPEM), []byte(p.KeyPEM))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: persisted certificate: %w", path, err)
	}
	if now.After(cert.Leaf.NotAfter) {
		return nil, nil, fmt.Errorf("%s: persisted certificate expired at %v", path, cert.Leaf.NotAfter)
	}
	return cert, &p, nil
}

// errKeyMismatch: the persisted key is not the certificate's.
var errKeyMismatch = errors.New("private key does not match the certificate")

// matchingKey reports errKeyMismatch when keyPEM's public key is not the
// one chainPEM's leaf certifies, so that the refusal says so in plain
// words rather than as whatever the TLS package says.
func matchingKey(chainPEM, keyPEM []byte) error {
	cb, _ := pem.Decode(chainPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return errors.New("no certificate in the persisted chain")
	}
	leaf, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return fmt.Errorf("persisted certificate: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return errors.New("no private key in the persisted state")
	}
	var key any
	if kb.Type == "EC PRIVATE KEY" {
		key, err = x509.ParseECPrivateKey(kb.Bytes)
	} else {
		key, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	}
	if err != nil {
		return fmt.Errorf("persisted private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return fmt.Errorf("persisted private key: %T cannot sign", key)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return errKeyMismatch
	}
	return nil
}

// persistedPort returns the public port saved in dir's state file, 0 when
// there is none. It reads that one field, whatever the state of the rest
// (an expired certificate does not make the port another's).
func persistedPort(dir string) int {
	if dir == "" {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return 0
	}
	var p struct {
		PublicPort int `json:"publicPort"`
	}
	if json.Unmarshal(b, &p) != nil || p.PublicPort < 1 || p.PublicPort > 65535 {
		return 0
	}
	return p.PublicPort
}

// loadClaim returns the claim kept in dir, making and keeping a new one
// when there is none (or it is not one this code wrote); a random claim,
// kept nowhere, when dir is empty or cannot be written, with the error.
func loadClaim(dir string) (string, error) {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	fresh := hex.EncodeToString(b)
	if dir == "" {
		return fresh, nil
	}
	path := filepath.Join(dir, claimFile)
	if old, err := os.ReadFile(path); err == nil {
		if c := strings.TrimSpace(string(old)); len(c) == 64 {
			if _, err := hex.DecodeString(c); err == nil {
				return c, nil
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fresh, err
	}
	tmp, err := os.CreateTemp(dir, claimFile+".*")
	if err != nil {
		return fresh, err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err == nil {
		_, err = tmp.WriteString(fresh + "\n")
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fresh, fmt.Errorf("keep the registration claim in %s: %w", dir, err)
	}
	return fresh, nil
}
