package ca

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func testSealer(t testing.TB, secret string) *Sealer {
	t.Helper()
	s, err := NewSealer([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const (
	secretA = "0123456789abcdef0123456789abcdef-a"
	secretB = "0123456789abcdef0123456789abcdef-b"
)

func TestSealOpens(t *testing.T) {
	s := testSealer(t, secretA)
	key := []byte("-----BEGIN PRIVATE KEY-----\nMIG...\n-----END PRIVATE KEY-----\n")
	sealed := s.Seal("/ca/signer", key)
	if strings.Contains(sealed, "PRIVATE KEY") || strings.Contains(sealed, "MIG") {
		t.Fatalf("sealed value shows the plaintext: %q", sealed)
	}
	got, err := s.Open("/ca/signer", sealed)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Open = %q, %v; want the plaintext", got, err)
	}
	if again := s.Seal("/ca/signer", key); again == sealed {
		t.Error("two seals of one value are equal: the nonce is not fresh")
	}
	// Another Sealer from the same secret (another server) opens it.
	if _, err := testSealer(t, secretA).Open("/ca/signer", sealed); err != nil {
		t.Errorf("a second sealer with the same secret: %v", err)
	}
}

// A sealed value opens only with its secret, under its store key, and
// unaltered.
func TestOpenRefuses(t *testing.T) {
	s := testSealer(t, secretA)
	sealed := s.Seal("/ca/signer", []byte("the key"))
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(sealed, sealedPrefix))
	flip := func(i int) string {
		b := bytes.Clone(raw)
		b[i] ^= 1
		return sealedPrefix + base64.StdEncoding.EncodeToString(b)
	}
	for _, tc := range []struct {
		name, secret, ad, sealed string
		unseal                   bool // want ErrUnseal, not a format error
	}{
		{"wrong secret", secretB, "/ca/signer", sealed, true},
		{"wrong associated data", secretA, "/ca/issuer", sealed, true},
		{"tampered nonce", secretA, "/ca/signer", flip(0), true},
		{"tampered ciphertext", secretA, "/ca/signer", flip(13), true},
		{"tampered tag", secretA, "/ca/signer", flip(len(raw) - 1), true},
		{"truncated", secretA, "/ca/signer", sealedPrefix + base64.StdEncoding.EncodeToString(raw[:len(raw)-1]), true},
		{"too short", secretA, "/ca/signer", sealedPrefix + base64.StdEncoding.EncodeToString(raw[:20]), false},
		{"no prefix", secretA, "/ca/signer", strings.TrimPrefix(sealed, sealedPrefix), false},
		{"clear PEM", secretA, "/ca/signer", "-----BEGIN PRIVATE KEY-----\n", false},
		{"bad base64", secretA, "/ca/signer", sealedPrefix + "!!!!", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := testSealer(t, tc.secret).Open(tc.ad, tc.sealed)
			if err == nil {
				t.Fatalf("Open = %q, want an error", got)
			}
			if errors.Is(err, ErrUnseal) != tc.unseal {
				t.Errorf("got %v; want ErrUnseal: %v", err, tc.unseal)
			}
		})
	}
}

func TestNewSealerRefusesShortSecret(t *testing.T) {
	if _, err := NewSealer([]byte("short")); err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Fatalf("got %v, want an error naming the minimum", err)
	}
	if s := NewSecret(); len(s) < MinSecretLen {
		t.Fatalf("NewSecret gave %d bytes", len(s))
	}
	if bytes.Equal(NewSecret(), NewSecret()) {
		t.Fatal("two new secrets are equal")
	}
}

// FuzzOpen feeds Open arbitrary values: it never panics, and nothing but
// a value sealed with the secret for that store key opens.
func FuzzOpen(f *testing.F) {
	s := testSealer(f, secretA)
	// A fixed nonce: fuzz workers are other processes, and each must
	// hold the same seed value.
	nonce := make([]byte, s.aead.NonceSize())
	good := sealedPrefix + base64.StdEncoding.EncodeToString(s.aead.Seal(nonce, nonce, []byte("k"), []byte("/ca/signer")))
	f.Add("/ca/signer", good)
	f.Add("/ca/issuer", good)
	f.Add("/ca/signer", sealedPrefix)
	f.Add("/ca/signer", sealedPrefix+"AAAA")
	f.Add("/ca/signer", "-----BEGIN PRIVATE KEY-----")
	f.Fuzz(func(t *testing.T, ad, sealed string) {
		// Forging a value needs the key, and Strict base64 gives each
		// byte string one encoding: only the seeded value opens.
		if _, err := s.Open(ad, sealed); err == nil && (ad != "/ca/signer" || sealed != good) {
			t.Fatalf("opened %q under %q", sealed, ad)
		}
	})
}
