//go:build linux

package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// outsidePKI is a root CA and an intermediate for Trellis made with the
// openssl command line, as the README's "Bringing your own CA" does.
type outsidePKI struct {
	dir                 string
	root, rootKey       string // the outside root; its key stays outside
	inter, interKey     string // Trellis's intermediate and its key
	chain               string // inter then root: what --ca-cert names
	rootPool            *x509.CertPool
	rootCert, interCert *x509.Certificate
}

func openssl(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("openssl", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newOutsidePKI makes the root, then an intermediate it signs with the
// extensions in interExt (an openssl extension file's lines), for a year.
func newOutsidePKI(t *testing.T, interExt string) *outsidePKI {
	t.Helper()
	return newOutsidePKIDays(t, interExt, 365)
}

func newOutsidePKIDays(t *testing.T, interExt string, days int) *outsidePKI {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("no openssl command") // .ci/run installs it
	}
	dir := t.TempDir()
	p := &outsidePKI{dir: dir,
		root: filepath.Join(dir, "root.pem"), rootKey: filepath.Join(dir, "root-key.pem"),
		inter: filepath.Join(dir, "trellis-ca.pem"), interKey: filepath.Join(dir, "trellis-ca-key.pem"),
		chain: filepath.Join(dir, "trellis-ca-chain.pem")}
	openssl(t, dir, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", "root-key.pem", "-out", "root.pem", "-days", "3650", "-subj", "/O=Example/CN=Example Root CA",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
	if err := os.WriteFile(filepath.Join(dir, "inter.ext"), []byte(interExt), 0o600); err != nil {
		t.Fatal(err)
	}
	openssl(t, dir, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", "trellis-ca-key.pem", "-out", "trellis-ca.csr", "-subj", "/O=Example/CN=Trellis intermediate")
	openssl(t, dir, "x509", "-req", "-in", "trellis-ca.csr", "-CA", "root.pem", "-CAkey", "root-key.pem",
		"-CAcreateserial", "-days", strconv.Itoa(days), "-extfile", "inter.ext", "-out", "trellis-ca.pem")
	rootPEM, _ := os.ReadFile(p.root)
	interPEM, _ := os.ReadFile(p.inter)
	if err := os.WriteFile(p.chain, append(interPEM, rootPEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	p.rootPool = x509.NewCertPool()
	if !p.rootPool.AppendCertsFromPEM(rootPEM) {
		t.Fatal("openssl wrote no root")
	}
	p.rootCert, p.interCert = parsePEMCert(t, rootPEM), parsePEMCert(t, interPEM)
	return p
}

func parsePEMCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	cs, err := parseChainPEM(b)
	if err != nil || len(cs) == 0 {
		t.Fatalf("parse certificate: %v", err)
	}
	return cs[0]
}

// interExt is the README's extension file: a CA that signs leaves only.
const interExt = "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"

// startServerWithCA starts a control plane that signs as the outside
// intermediate; the CLI and proxies trust the outside root alone.
func startServerWithCA(t *testing.T, p *outsidePKI) *server {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t))
	dir := t.TempDir()
	s := &server{proc: start(t, "server", nil, "server", "--data-dir", dir, "--listen", addr, "--log-level", "debug",
		"--ca-cert", p.chain, "--ca-key", p.interKey), addr: addr, dataDir: dir, caFile: p.root}
	s.waitUp(t)
	b, err := os.ReadFile(filepath.Join(dir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	s.admin = strings.TrimSpace(string(b))
	rootPEM, _ := os.ReadFile(p.root)
	if s.api, err = client.New(client.Config{Addr: addr, Token: s.admin, CAPEM: rootPEM}); err != nil {
		t.Fatal(err)
	}
	return s
}

// verifyToRoot checks that chain (leaf first, as sent) verifies to the
// outside root with nothing but what the chain itself carries.
func verifyToRoot(chain []*x509.Certificate, p *outsidePKI, usage x509.ExtKeyUsage) error {
	if len(chain) == 0 {
		return errors.New("no certificates")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: p.rootPool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// peerChain returns the certificates addr sends in its handshake, without
// completing it (a mesh port wants a client certificate we do not have).
func peerChain(addr string) ([]*x509.Certificate, error) {
	var got []*x509.Certificate
	errSeen := errors.New("seen")
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, &tls.Config{
		InsecureSkipVerify: true, // verified below, against the root alone
		VerifyConnection: func(cs tls.ConnectionState) error {
			got = cs.PeerCertificates
			return errSeen
		},
	})
	if c != nil {
		c.Close()
	}
	if got == nil {
		return nil, fmt.Errorf("no server certificates: %w", err)
	}
	return got, nil
}

// The "imported CA": a root made with openssl signs Trellis's
// intermediate; Trellis runs as that intermediate; every SVID chains to
// the root and every handshake carries the intermediate, so that the
// bundle holds the root alone and a client that trusts only the root
// verifies a sidecar's edge listener.
func TestImportedCAFromOpenSSL(t *testing.T) {
	p := newOutsidePKI(t, interExt)
	s := startServerWithCA(t, p)
	if !strings.Contains(s.logText(), "signing as the imported CA") || !strings.Contains(s.logText(), certs.Fingerprint(p.rootCert)) {
		t.Errorf("the server does not say which CA it signs as, under which root:\n%s", tail(s.logText(), 10))
	}

	// The CLI trusts the root alone (TRELLIS_CACERT): the API's serving
	// certificate arrives with the intermediate.
	bundle := s.mustCLI(t, "ca", "roots")
	bcerts, err := parseChainPEM([]byte(bundle))
	if err != nil || len(bcerts) != 1 || !bcerts[0].Equal(p.rootCert) {
		t.Fatalf("trust bundle = %d certificates (%v), want the outside root alone:\n%s", len(bcerts), err, bundle)
	}

	s.mustCLI(t, "intention", "allow", "client", "shop")
	applyYAML(t, s, "kind: Service\nname: shop\nspec: {dnsNames: [shop.example.test]}\n")
	shop := startApp(t, "shop")
	edge := trellistest.FreePort(t)
	shopProxy := s.startProxy(t, proxyOpts{service: "shop", appPort: shop.port, extra: []string{
		"--edge-port", strconv.Itoa(edge), "--edge-addr", "127.0.0.1",
		"--edge-cert-source", "mesh", "--edge-dns-name", "shop.example.test"}})
	up, upPort := loopAddr(t)
	clientProxy := s.startProxy(t, proxyOpts{service: "client", appPort: shop.port,
		upstreams: []string{fmt.Sprintf("shop:%d", upPort)}})
	trellistest.Eventually(t, 15*time.Second, "call through the mesh", func() error {
		got, err := get(up)
		if err == nil && got != "shop" {
			err = fmt.Errorf("got %q, want shop", got)
		}
		return err
	})

	// Each proxy's SVID, as it holds it and as its mesh port sends it.
	for _, px := range []*sidecar{shopProxy, clientProxy} {
		resp, err := http.Get("http://" + px.admin + "/certs")
		if err != nil {
			t.Fatal(err)
		}
		var c struct {
			SpiffeID string `json:"spiffeId"`
			Chain    string `json:"chain"`
		}
		err = json.NewDecoder(resp.Body).Decode(&c)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		chain, err := parseChainPEM([]byte(c.Chain))
		if err != nil {
			t.Fatal(err)
		}
		if len(chain) != 2 || !chain[1].Equal(p.interCert) {
			t.Errorf("%s: SVID chain has %d certificates, want the leaf and the outside intermediate", px.name, len(chain))
		}
		for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
			if err := verifyToRoot(chain, p, u); err != nil {
				t.Errorf("%s: SVID %s does not verify to the outside root (usage %v): %v", px.name, c.SpiffeID, u, err)
			}
		}
	}
	ins, err := s.api.Instances(context.Background(), "shop")
	if err != nil || len(ins) != 1 {
		t.Fatalf("instances of shop = %v, %v", ins, err)
	}
	sent, err := peerChain(fmt.Sprintf("%s:%d", ins[0].Address, ins[0].Port))
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyToRoot(sent, p, x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("the chain shop's mesh port sends (%d certificates) does not verify to the outside root: %v", len(sent), err)
	}

	// A root held outside cannot be rotated from here: the CLI says what
	// to do instead, and nothing changes.
	if out, code := s.cli(t, "ca", "rotate"); code == 0 || !strings.Contains(out, "rotate it at its source") {
		t.Errorf("ca rotate with an imported CA: exit %d, want a refusal saying what to do:\n%s", code, out)
	}
	if after := s.mustCLI(t, "ca", "roots"); after != bundle {
		t.Errorf("ca rotate changed the trust bundle:\n%s", after)
	}

	// The edge listener's certificate from the mesh CA, checked by a
	// client that holds the outside root and nothing else.
	edgeAddr := "127.0.0.1:" + strconv.Itoa(edge)
	trellistest.Eventually(t, 15*time.Second, "edge verified by the outside root", func() error {
		got, err := httpsGet(edgeAddr, p.rootPool, "https://shop.example.test/")
		if err == nil && got != "shop" {
			err = fmt.Errorf("got %q, want shop", got)
		}
		return err
	})
}

// An imported CA that expires within 30 days still signs, with a warning
// at start: every certificate it signs ends with it.
func TestImportedCAExpiringSoon(t *testing.T) {
	p := newOutsidePKIDays(t, interExt, 10)
	s := startServerWithCA(t, p)
	if !strings.Contains(s.logText(), "the imported CA expires in") {
		t.Errorf("no warning about an imported CA that expires in 10 days:\n%s", tail(s.logText(), 10))
	}
	s.mustCLI(t, "get", "services")
}

// A CA Trellis cannot sign as is refused at start, with the reason.
func TestImportedCARefused(t *testing.T) {
	tests := []struct {
		name  string
		ext   string
		setup func(t *testing.T, p *outsidePKI) (certFile, keyFile string)
		want  string
	}{
		{"not a CA", "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n", nil, "CA:TRUE"},
		{"no keyCertSign", "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, digitalSignature, cRLSign\n", nil, "keyCertSign"},
		{"key of another certificate", interExt, func(t *testing.T, p *outsidePKI) (string, string) {
			return p.chain, p.rootKey
		}, "does not match"},
		{"intermediate without its root", interExt, func(t *testing.T, p *outsidePKI) (string, string) {
			return p.inter, p.interKey
		}, "not self-signed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newOutsidePKI(t, tt.ext)
			cert, key := p.chain, p.interKey
			if tt.setup != nil {
				cert, key = tt.setup(t, p)
			}
			out, code := runCLI(t, nil, "server", "--data-dir", t.TempDir(),
				"--listen", fmt.Sprintf("127.0.0.1:%d", trellistest.FreePort(t)), "--ca-cert", cert, "--ca-key", key)
			if code == 0 || !strings.Contains(out, tt.want) {
				t.Errorf("server with %s: exit %d, want a refusal containing %q:\n%s", tt.name, code, tt.want, out)
			}
		})
	}
}

func parseChainPEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}
