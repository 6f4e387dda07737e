package check

import (
	"fmt"
	"strings"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Certificates checks the expiry of the trust bundle's roots and of the
// CA chain the servers sign with: an error once one has expired (peers
// refuse what chains to it), a warning within l.ExpiryWarning.
func Certificates(m Mesh, l Limits) []Finding {
	var out []Finding
	check := func(kind, subject string, notAfter time.Time, fix string) {
		left := notAfter.Sub(m.Now)
		at := notAfter.UTC().Format(time.DateOnly)
		switch {
		case left <= 0:
			out = append(out, Finding{Severity: Error, Check: "ca", Where: kind + " " + subject,
				What: fmt.Sprintf("%s expired on %s", kind, at), Fix: fix})
		case left < l.expiryWarning():
			out = append(out, Finding{Severity: Warning, Check: "ca", Where: kind + " " + subject,
				What: fmt.Sprintf("%s expires on %s, in %s", kind, at, days(left)), Fix: fix})
		}
	}
	const rotate = "rotate the CA before then: trellis ca rotate (or ca add-root with a new CA, then restart the servers with it)"
	for _, c := range m.Roots.Certs {
		check("root", c.Subject, c.NotAfter, rotate)
	}
	for _, c := range m.CAChain {
		check("CA certificate", c.Subject, c.NotAfter, "renew the intermediate CA and restart the servers with --ca-cert/--ca-key")
	}
	switch {
	case len(m.Roots.Certs) == 0:
		out = append(out, Finding{Severity: Error, Check: "ca", What: "the trust bundle holds no root", Fix: "see the server's log; every mTLS handshake fails without one"})
	case len(out) == 0:
		soonest := m.Roots.Certs[0].NotAfter
		for _, c := range append(rootsAsCerts(m.Roots.Certs), m.CAChain...) {
			if c.NotAfter.Before(soonest) {
				soonest = c.NotAfter
			}
		}
		out = append(out, ok("ca", fmt.Sprintf("%d roots and the CA valid for %s more", len(m.Roots.Certs), days(soonest.Sub(m.Now)))))
	}
	return out
}

func rootsAsCerts(rs []v1.RootCert) []Cert {
	out := make([]Cert, len(rs))
	for i, r := range rs {
		out[i] = Cert{Subject: r.Subject, NotAfter: r.NotAfter}
	}
	return out
}

// days renders d in whole days, or hours under two days.
func days(d time.Duration) string {
	if d < 48*time.Hour {
		return fmt.Sprintf("%d hours", int(d.Hours()))
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

// Rotation reports a root rotation in progress: a warning, with the step
// that ends it.
func Rotation(m Mesh) []Finding {
	r := m.Rotation
	short := func(fp string) string { return fp[:min(16, len(fp))] }
	switch r.Phase {
	case v1.RotationPrepared:
		f := Finding{Severity: Warning, Check: "rotation", Where: "root " + short(r.NewRoot),
			What: fmt.Sprintf("a root rotation is in progress: %d of %d proxies trust the new root", r.Trusting, r.Proxies),
			Fix:  "run trellis ca rotate to finish it"}
		if len(r.Waiting) > 0 {
			f.What += "; waiting for " + strings.Join(r.Waiting, ", ")
		}
		return []Finding{f}
	case v1.RotationActive:
		f := Finding{Severity: Warning, Check: "rotation", Where: "root " + short(r.OldRoot),
			What: "a root rotation is in progress: the servers sign with the new key; the old root stays trusted",
			Fix:  "run trellis ca rotate to retire the old root"}
		if r.OldSVIDsUntil != nil {
			f.Fix += " once its certificates expire (" + r.OldSVIDsUntil.UTC().Format(time.DateTime) + " UTC)"
		}
		return []Finding{f}
	}
	return nil
}
