package control

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/store"
)

// caPair is a CA read from a certificate file and a key file.
type caPair struct {
	ca              *ca.CA
	certPEM, keyPEM []byte
}

// loadImported reads the CA of --ca-cert/--ca-key. The key file must be
// 0600: it is the mesh's signing key.
func (s *Server) loadImported() (*caPair, error) {
	p, err := readCAPair(s.cfg.TrustDomain, s.cfg.CACertFile, s.cfg.CAKeyFile)
	if err != nil {
		return nil, fmt.Errorf("import ca --ca-cert %s --ca-key %s: %w", s.cfg.CACertFile, s.cfg.CAKeyFile, err)
	}
	return p, nil
}

// dataDirCAFiles are where servers before the shared CA kept theirs; the
// certificate file stays, holding the shared CA's roots for the CLI.
func (s *Server) dataDirCAFiles() (certFile, keyFile string) {
	return filepath.Join(s.cfg.DataDir, "ca.pem"), filepath.Join(s.cfg.DataDir, "ca-key.pem")
}

// loadDataDirCA reads the CA that servers before the shared CA kept in
// their data dir, to move it into the store; nil when there is none.
func (s *Server) loadDataDirCA() (*caPair, error) {
	certFile, keyFile := s.dataDirCAFiles()
	if _, err := os.Stat(keyFile); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	p, err := readCAPair(s.cfg.TrustDomain, certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load ca %s with key %s: %w (a rotation interrupted between the two files? "+
			"restore the pair, or start with --ca-cert and --ca-key naming a matching one)", certFile, keyFile, err)
	}
	return p, nil
}

func readCAPair(trustDomain, certFile, keyFile string) (*caPair, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read ca certificate: %w", err)
	}
	if fi, err := os.Stat(keyFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("ca key %s is readable by others (mode %v); chmod 600 it", keyFile, fi.Mode().Perm())
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read ca key: %w", err)
	}
	c, err := ca.Load(trustDomain, certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &caPair{ca: c, certPEM: certPEM, keyPEM: keyPEM}, nil
}

// importedCAWarning is how long before an imported CA's expiry the server
// warns at start: leaves are cut to that expiry, so the mesh stops with it.
const importedCAWarning = 30 * 24 * time.Hour

// logImported says which CA the server signs as, and warns when it
// expires soon: an imported CA is renewed outside, by hand.
func (s *Server) logImported(c *ca.CA, now time.Time) {
	cert := c.Certificate()
	args := []any{"subject", cert.Subject.String(), "expires", cert.NotAfter.UTC().Format(time.RFC3339),
		"root", certs.Fingerprints(c.RootsPEM())[0]}
	if left := cert.NotAfter.Sub(now); left < importedCAWarning {
		s.log.Warn(fmt.Sprintf("the imported CA expires in %s: every certificate it signs ends then; "+
			"issue a new one from the same root and restart with it", left.Round(time.Hour)), args...)
		return
	}
	s.log.Info("signing as the imported CA", args...)
}

// publishBundle writes the CA's roots to the store for every server and
// proxy. Roots already there from another CA are kept beside the new ones,
// so that a CA change does not cut off workloads that still hold old SVIDs.
func publishBundle(ctx context.Context, st store.Store, c *ca.CA) error {
	return addRoots(ctx, st, c.TrustDomain(), c.RootsPEM())
}

// addRoots adds PEM roots to the trust bundle in the store, creating it if
// needed; roots already in it are not added twice. This is the first step
// of a CA rotation: every proxy trusts the new root before anything is
// signed by it.
func addRoots(ctx context.Context, st store.Store, trustDomain string, rootsPEM []byte) error {
	for {
		kv, err := st.Get(ctx, keyBundle)
		if errors.Is(err, store.ErrNotFound) {
			b, _ := json.Marshal(bundleRecord{TrustDomain: trustDomain, RootsPEM: string(rootsPEM)})
			err = st.Create(ctx, keyBundle, b)
			if errors.Is(err, store.ErrExists) {
				continue
			}
			return err
		}
		if err != nil {
			return err
		}
		var cur bundleRecord
		if err := json.Unmarshal(kv.Value, &cur); err != nil {
			return fmt.Errorf("decode trust bundle in store: %w", err)
		}
		if cur.TrustDomain != trustDomain {
			return fmt.Errorf("the store's mesh has trust domain %q, this server's CA %q", cur.TrustDomain, trustDomain)
		}
		merged, changed, err := mergeRoots(cur.RootsPEM, rootsPEM)
		if err != nil || !changed {
			return err
		}
		cur.RootsPEM = merged
		b, _ := json.Marshal(cur)
		err = st.Commit(ctx, []store.Op{{Key: keyBundle, Value: b, IfRev: kv.Rev}})
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		return err
	}
}

// mergeRoots appends the certificates of add that cur lacks. Every one must
// be a CA certificate.
func mergeRoots(cur string, add []byte) (string, bool, error) {
	have, _ := ca.ParseCertificates([]byte(cur))
	adds, err := ca.ParseCertificates(add)
	if err != nil {
		return "", false, err
	}
	var b strings.Builder
	b.WriteString(cur)
	changed := false
next:
	for _, c := range adds {
		if !c.IsCA {
			return "", false, fmt.Errorf("certificate %q is not a CA", c.Subject.CommonName)
		}
		for _, h := range have {
			if h.Equal(c) {
				continue next
			}
		}
		have = append(have, c)
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
		changed = true
	}
	return b.String(), changed, nil
}

// servingNames are the names and addresses clients reach the API by:
// localhost, the loopback addresses, the host name, the configured names
// and the listen address.
func (s *Server) servingNames() ([]string, []net.IP) {
	dns := []string{"localhost"}
	if h, err := os.Hostname(); err == nil && h != "" {
		dns = append(dns, h)
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, n := range s.cfg.AdvertiseNames {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, n)
		}
	}
	if host, _, err := net.SplitHostPort(s.cfg.Listen); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
	}
	return dns, ips
}

// checkServerNames refuses an edge name that covers a name the API is
// served under: clients that check the API by name and the mesh roots
// alone (curl --cacert, a metrics scraper) would take that service for it.
func (s *Server) checkServerNames(name string) error {
	dns, _ := s.servingNames()
	for _, d := range dns {
		if edgeOverlap(name, d) {
			return fmt.Errorf("%q covers %q, a name the control plane serves under", name, d)
		}
	}
	return nil
}

// servingCert issues the API's TLS certificate from the mesh CA, for
// localhost, the loopback addresses, the host name and any configured names.
func (s *Server) servingCert(c *ca.CA) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	dns, ips := s.servingNames()
	chainPEM, err := c.SignServing(ca.ServingRequest{PublicKey: &key.PublicKey, DNSNames: dns, IPs: ips, TTL: 30 * 24 * time.Hour})
	if err != nil {
		return nil, err
	}
	keyPEM, err := certs.EncodeKey(key)
	if err != nil {
		return nil, err
	}
	return certs.KeyPair(chainPEM, keyPEM)
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
