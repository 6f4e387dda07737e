package ca

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// A CA key that every server of a mesh signs with lives in the store,
// sealed with a secret every server is given (the store secret): AES-256-
// GCM under a key derived from the secret with HKDF-SHA256, the store key
// the value is written under as associated data, so that a sealed value
// moved to another key does not open. Whoever reads the store without the
// secret learns nothing of the key; whoever alters a sealed value makes it
// fail to open, never open to something else.

// MinSecretLen is the shortest store secret accepted, in bytes: 256 bits
// when it is random base64, as NewSecret's are.
const MinSecretLen = 32

// sealedPrefix marks (and versions) a sealed value.
const sealedPrefix = "trellis-sealed-v1:"

// hkdfInfo binds the derived key to this one use of the secret.
const hkdfInfo = "trellis store secret v1: ca key sealing"

// ErrUnseal says a sealed value did not open: the secret is not the one
// it was sealed with, or the value was altered or moved from another key.
var ErrUnseal = errors.New("does not decrypt: another store secret, or a value altered or moved from another key")

// Sealer seals and opens values with one store secret. It is safe for
// concurrent use.
type Sealer struct {
	aead cipher.AEAD
}

// NewSealer derives the sealing key from secret, which must be at least
// MinSecretLen bytes.
func NewSealer(secret []byte) (*Sealer, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("store secret: %d bytes, want at least %d (openssl rand -base64 32 makes one)", len(secret), MinSecretLen)
	}
	key, err := hkdf.Key(sha256.New, secret, nil, hkdfInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("derive sealing key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// NewSecret returns a new random store secret: 32 bytes, base64 (43
// characters).
func NewSecret() []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return []byte(base64.RawURLEncoding.EncodeToString(b))
}

// Seal encrypts plaintext for the store key ad: a random 96-bit nonce,
// then the ciphertext and its tag, base64, after a version prefix.
func (s *Sealer) Seal(ad string, plaintext []byte) string {
	nonce := make([]byte, s.aead.NonceSize())
	_, _ = rand.Read(nonce)
	out := s.aead.Seal(nonce, nonce, plaintext, []byte(ad))
	return sealedPrefix + base64.StdEncoding.EncodeToString(out)
}

// Open decrypts a value Seal made for the same store key ad. A value that
// is not one Seal makes is refused with what is wrong; one that does not
// authenticate gives ErrUnseal.
func (s *Sealer) Open(ad, sealed string) ([]byte, error) {
	rest, ok := strings.CutPrefix(sealed, sealedPrefix)
	if !ok {
		return nil, fmt.Errorf("not a sealed value: want the prefix %q", sealedPrefix)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(rest)
	if err != nil {
		return nil, fmt.Errorf("sealed value: %w", err)
	}
	ns := s.aead.NonceSize()
	if len(b) < ns+s.aead.Overhead() {
		return nil, fmt.Errorf("sealed value: %d bytes, shorter than a nonce and a tag", len(b))
	}
	out, err := s.aead.Open(nil, b[:ns], b[ns:], []byte(ad))
	if err != nil {
		return nil, ErrUnseal
	}
	return out, nil
}
