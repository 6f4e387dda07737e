package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
)

// outside is a certificate of an outside PKI and its key.
type outside struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func (o outside) pem() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: o.cert.Raw})
}

// mkCA makes a CA certificate from tmpl (defaults filled in), signed by
// parent or self-signed.
func mkCA(t *testing.T, name string, tmpl x509.Certificate, parent *outside) outside {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.Subject = pkix.Name{Organization: []string{"Example"}, CommonName: name}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(365 * 24 * time.Hour)
	}
	if tmpl.KeyUsage == 0 {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	}
	tmpl.BasicConstraintsValid = true
	parentCert, parentKey := &tmpl, key
	if parent != nil {
		parentCert, parentKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, parentCert, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return outside{cert: c, key: key}
}

func keyPEM(t *testing.T, o outside) []byte {
	t.Helper()
	b, err := certs.EncodeKey(o.key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// An imported CA Trellis could not sign with, or whose SVIDs peers would
// refuse, is refused at load with the reason and the certificate.
func TestLoadImportedRefusals(t *testing.T) {
	root := mkCA(t, "Example Root", x509.Certificate{IsCA: true}, nil)
	rootPath0 := mkCA(t, "Example Root pathlen 0", x509.Certificate{IsCA: true, MaxPathLenZero: true}, nil)
	good := mkCA(t, "Trellis intermediate", x509.Certificate{IsCA: true, MaxPathLenZero: true}, &root)
	tests := []struct {
		name  string
		chain func() ([]byte, []byte)
		want  string
	}{
		{"not a CA", func() ([]byte, []byte) {
			i := mkCA(t, "leaf", x509.Certificate{IsCA: false, KeyUsage: x509.KeyUsageDigitalSignature}, &root)
			return append(i.pem(), root.pem()...), keyPEM(t, i)
		}, "CA:TRUE"},
		{"no keyCertSign", func() ([]byte, []byte) {
			i := mkCA(t, "Trellis intermediate", x509.Certificate{IsCA: true, KeyUsage: x509.KeyUsageCRLSign}, &root)
			return append(i.pem(), root.pem()...), keyPEM(t, i)
		}, "keyCertSign"},
		{"expired", func() ([]byte, []byte) {
			i := mkCA(t, "Trellis intermediate", x509.Certificate{IsCA: true,
				NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}, &root)
			return append(i.pem(), root.pem()...), keyPEM(t, i)
		}, `certificate 1 "CN=Trellis intermediate,O=Example" expired at`},
		{"root expired", func() ([]byte, []byte) {
			r := mkCA(t, "Old Root", x509.Certificate{IsCA: true,
				NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}, nil)
			i := mkCA(t, "Trellis intermediate", x509.Certificate{IsCA: true}, &r)
			return append(i.pem(), r.pem()...), keyPEM(t, i)
		}, `certificate 2 "CN=Old Root,O=Example" expired at`},
		{"not yet valid", func() ([]byte, []byte) {
			i := mkCA(t, "Trellis intermediate", x509.Certificate{IsCA: true, NotBefore: time.Now().Add(time.Hour)}, &root)
			return append(i.pem(), root.pem()...), keyPEM(t, i)
		}, "not valid before"},
		{"key of another certificate", func() ([]byte, []byte) {
			return append(good.pem(), root.pem()...), keyPEM(t, root)
		}, "does not match"},
		{"root pathlen 0 above an intermediate", func() ([]byte, []byte) {
			i := mkCA(t, "Trellis intermediate", x509.Certificate{IsCA: true}, &rootPath0)
			return append(i.pem(), rootPath0.pem()...), keyPEM(t, i)
		}, "pathlen:0, which forbids"},
		{"intermediate pathlen 0 above another", func() ([]byte, []byte) {
			i2 := mkCA(t, "Trellis intermediate", x509.Certificate{IsCA: true}, &good)
			return append(append(i2.pem(), good.pem()...), root.pem()...), keyPEM(t, i2)
		}, `certificate 2 "CN=Trellis intermediate,O=Example" has pathlen:0`},
		{"no root at the top", func() ([]byte, []byte) {
			return good.pem(), keyPEM(t, good)
		}, "not self-signed"},
		{"intermediate limited to serverAuth", func() ([]byte, []byte) {
			i := mkCA(t, "Trellis intermediate", x509.Certificate{IsCA: true, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, &root)
			return append(i.pem(), root.pem()...), keyPEM(t, i)
		}, "would not verify"},
		{"valid, pathlen 0", func() ([]byte, []byte) {
			return append(good.pem(), root.pem()...), keyPEM(t, good)
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, kPEM := tt.chain()
			c, err := ca.Load("trellis.local", certPEM, kPEM)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if got := string(c.RootsPEM()); got != string(root.pem()) {
					t.Errorf("roots are not the outside root")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load error = %v, want containing %q", err, tt.want)
			}
		})
	}
}

// `openssl ecparam -genkey` writes EC PARAMETERS before the key.
func TestParsePrivateKeyAfterECParameters(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	params := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}})
	b := append(params, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...)
	got, err := ca.ParsePrivateKey(b)
	if err != nil {
		t.Fatalf("ParsePrivateKey: %v", err)
	}
	if !key.PublicKey.Equal(got.Public()) {
		t.Error("parsed another key")
	}
}
