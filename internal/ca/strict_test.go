package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

func pemOf(fs ...*trellistest.Forged) []byte {
	var out []byte
	for _, f := range fs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.Cert.Raw})...)
	}
	return out
}

// issue has c sign an SVID for service a and returns the chain a peer
// would present.
func issue(t *testing.T, c *ca.CA) []*x509.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return issueFor(t, c, k)
}

func issueFor(t *testing.T, c *ca.CA, k crypto.Signer) []*x509.Certificate {
	t.Helper()
	id, _ := identity.New(c.TrustDomain(), "a")
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	chainPEM, err := c.SignSVID(ca.SignRequest{CSR: csr, ID: id})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.ParseCertificates(chainPEM)
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

// What the CA issues passes the strict X509-SVID verifier: from its own
// root (which carries spiffe://<td>), and from imported intermediates with
// or without the trust domain's ID, one or two levels deep.
func TestIssuedSVIDsPassTheStrictVerifier(t *testing.T) {
	root := trellistest.NewCA(t, "td")
	if _, err := certs.VerifySVID(issue(t, root.CA), root.Bundle(t), time.Now()); err != nil {
		t.Fatalf("SVID from the generated root: %v", err)
	}
	if u := root.Certificate().URIs; len(u) != 1 || u[0].String() != "spiffe://td" {
		t.Fatalf("generated root URIs = %v, want [spiffe://td]", u)
	}
	// Every key type the CA signs (RSA leaves get keyEncipherment too).
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for name, k := range map[string]crypto.Signer{"P-384": p384, "RSA": rsaKey, "Ed25519": edKey} {
		if _, err := certs.VerifySVID(issueFor(t, root.CA, k), root.Bundle(t), time.Now()); err != nil {
			t.Errorf("%s SVID from the generated root: %v", name, err)
		}
	}
	for _, ids := range [][]string{nil, {"spiffe://td"}} {
		i1 := trellistest.Forge(t, trellistest.SigningSpec(ids...), root.Forger(t))
		i2 := trellistest.Forge(t, trellistest.SigningSpec(ids...), i1)
		for name, chain := range map[string][]*trellistest.Forged{"one level": {i1}, "two levels": {i2, i1}} {
			keyPEM, _ := certs.EncodeKey(chain[0].Key)
			c, err := ca.Load("td", append(pemOf(chain...), root.CertPEM...), keyPEM)
			if err != nil {
				t.Fatalf("%s, IDs %v: Load: %v", name, ids, err)
			}
			if _, err := certs.VerifySVID(issue(t, c), root.Bundle(t), time.Now()); err != nil {
				t.Errorf("%s, IDs %v: issued SVID refused: %v", name, ids, err)
			}
		}
	}
}

// Load refuses an imported chain whose SVIDs every peer would refuse, and
// says why, instead of issuing certificates that fail at handshake time.
func TestLoadRefusesChainsPeersWouldRefuse(t *testing.T) {
	root := trellistest.NewCA(t, "td")
	ok := trellistest.Forge(t, trellistest.SigningSpec(), root.Forger(t))
	tests := []struct {
		name  string
		chain func() []*trellistest.Forged // signing certificate first
		want  string
	}{
		{"signing certificate with a path", func() []*trellistest.Forged {
			return []*trellistest.Forged{trellistest.Forge(t, trellistest.SigningSpec("spiffe://td/ca"), root.Forger(t))}
		}, "no path"},
		{"signing certificate of another trust domain", func() []*trellistest.Forged {
			return []*trellistest.Forged{trellistest.Forge(t, trellistest.SigningSpec("spiffe://other"), root.Forger(t))}
		}, `not trust domain "td"`},
		{"intermediate above with a path", func() []*trellistest.Forged {
			mid := trellistest.Forge(t, trellistest.SigningSpec("spiffe://td/mid"), root.Forger(t))
			return []*trellistest.Forged{trellistest.Forge(t, trellistest.SigningSpec(), mid), mid}
		}, "certificate 2"},
		{"intermediate above without key usage", func() []*trellistest.Forged {
			mid := trellistest.Forge(t, trellistest.ForgeSpec{IsCA: true}, root.Forger(t))
			return []*trellistest.Forged{trellistest.Forge(t, trellistest.SigningSpec(), mid), mid}
		}, "keyCertSign"},
		{"valid", func() []*trellistest.Forged { return []*trellistest.Forged{ok} }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain := tt.chain()
			keyPEM, _ := certs.EncodeKey(chain[0].Key)
			_, err := ca.Load("td", append(pemOf(chain...), root.CertPEM...), keyPEM)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load error = %v, want containing %q", err, tt.want)
			}
		})
	}
}
