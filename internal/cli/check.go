package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/check"
)

// defaultBehindWait is how long `trellis check` watches a proxy behind its
// snapshot before that is an error: three times check.StatusDelay, so a
// proxy that applied its snapshot has had its status written meanwhile.
const defaultBehindWait = 3 * check.StatusDelay

// The secret files of a server's data dir, as internal/control names
// them (control.AdminTokenFileName, control.StoreSecretFileName; a test
// pins them): named here so that the proxy-only build, which has check
// but not the control plane, does not link it.
const (
	adminTokenFile  = "admin-token"
	storeSecretFile = "store-secret"
)

func runCheck(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "check", "check [-o text|json] [--wait DURATION] [--data-dir DIR]")
	out := fs.String("o", "text", "output format: text or json (the findings as data)")
	wait := fs.Duration("wait", defaultBehindWait, "how long to watch a proxy that is behind its snapshot before that is an error (0: report it as a warning at once)")
	dataDir := fs.String("data-dir", "", "data dir of a server on this machine, whose secret files are checked too (default: that of the trellis up of the context file)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if *out != "text" && *out != "json" {
		return usageErr("-o %q: want text or json", *out)
	}
	if *wait < 0 {
		return usageErr("--wait %v: must not be negative", *wait)
	}
	findings := localFindings(e, *dataDir)
	findings = append(findings, meshFindings(ctx, e, *wait)...)
	if *out == "json" {
		if findings == nil {
			findings = []check.Finding{}
		}
		if err := show(e.stdout, "json", findings, nil); err != nil {
			return err
		}
	} else {
		printFindings(e.stdout, findings)
	}
	if check.Worst(findings) == check.Error {
		return errInvalid // exit 1; the findings say why
	}
	return nil
}

// meshFindings reaches the server and runs every rule over what it shows;
// a server it cannot reach is one error finding.
func meshFindings(ctx context.Context, e *env, wait time.Duration) []check.Finding {
	fail := func(err error) []check.Finding {
		f := check.Finding{Severity: check.Error, Check: "server", Where: e.server,
			What: "cannot read the mesh: " + oneLine(err),
			Fix:  "fix what the server said (a token it refuses: set TRELLIS_TOKEN to an admin or viewer token), or see its log"}
		if u := e.unreachable(err); u != err {
			// unreachable says what happened and what to do in one
			// line: the finding keeps them apart.
			what, _, _ := strings.Cut(oneLine(u), "; start one")
			f.What, f.Fix = what, "start a server (trellis up, or trellis server), or point TRELLIS_ADDR (and TRELLIS_TOKEN, TRELLIS_CACERT) at a running one"
		} else if e.server == "" {
			f.Fix = "set TRELLIS_ADDR, TRELLIS_TOKEN and TRELLIS_CACERT, or start a mesh here with trellis up"
		}
		return []check.Finding{f}
	}
	c, err := connect(e)
	if err != nil {
		return fail(err)
	}
	defer c.CloseIdleConnections()
	m := check.Mesh{}
	if m.Roots, err = c.Roots(ctx); err != nil {
		return fail(err)
	}
	from := e.serverFrom
	if i := strings.Index(from, ","); i > 0 {
		from = from[:i] // the rest says what a stale context file's reader should do; the context check says it
	}
	out := []check.Finding{{Severity: check.OK, Check: "server", Where: c.Host(), What: "reached the control plane (address from " + from + ")"}}
	if m.Rotation, err = c.Rotation(ctx); err != nil {
		out = append(out, check.Finding{Severity: check.Warning, Check: "rotation", What: "cannot read the root rotation: " + oneLine(err),
			Fix: "see the server's log"})
	}
	m.CAChain, err = caChain(ctx, c, m.Roots)
	if err != nil {
		out = append(out, check.Finding{Severity: check.Warning, Check: "ca", Where: c.Host(), What: "cannot read the CA chain the server presents: " + oneLine(err),
			Fix: "run trellis check again; the roots were checked"})
	}
	proxies, behind, err := watchProxies(ctx, c.Proxies, watch{wait: wait, every: time.Second, progress: e.stderr})
	if err != nil {
		return append(out, fail(err)...)
	}
	m.Proxies = proxies
	for _, k := range v1.Kinds {
		rs, err := c.List(ctx, k)
		if err != nil {
			return append(out, fail(err)...)
		}
		m.Resources = append(m.Resources, rs...)
	}
	if m.Instances, err = c.Instances(ctx, ""); err != nil {
		return append(out, fail(err)...)
	}
	m.Now = time.Now()
	return append(out, check.All(m, behind, check.Limits{BehindError: wait})...)
}

// watch says how watchProxies waits.
type watch struct {
	// wait is how long a proxy may be seen behind without progress.
	wait time.Duration
	// every is how often the proxies are read again meanwhile.
	every time.Duration
	// progress, if set, is told that check waits, and for whom.
	progress io.Writer
	// now and sleep are the clock; nil means the real one.
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
}

// watchProxies reads the proxies' status until none is behind its
// snapshot (sent != acked, with no rejection), or one has been seen behind
// without progress (its acked version unchanged) for w.wait. The API
// writes no event when a proxy catches up, and a proxy's status may be
// check.StatusDelay old, so it polls. It returns the last status read and,
// for each proxy still behind, how long it has been seen so.
func watchProxies(ctx context.Context, read func(context.Context) ([]v1.ProxyStatus, error), w watch) ([]v1.ProxyStatus, map[string]time.Duration, error) {
	if w.now == nil {
		w.now = time.Now
	}
	if w.sleep == nil {
		w.sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
				return nil
			}
		}
	}
	type seen struct {
		acked string
		since time.Time
	}
	first := map[string]seen{}
	told := false
	for {
		ps, err := read(ctx)
		if err != nil {
			return nil, nil, err
		}
		now := w.now()
		behind := map[string]time.Duration{}
		var names []string
		longest := time.Duration(0)
		for _, p := range ps {
			if p.Error != "" || p.SentVersion == p.AckedVersion {
				continue
			}
			s, ok := first[p.Instance]
			if !ok || s.acked != p.AckedVersion {
				s = seen{acked: p.AckedVersion, since: now}
				first[p.Instance] = s
			}
			behind[p.Instance] = now.Sub(s.since)
			longest = max(longest, now.Sub(s.since))
			names = append(names, p.Instance)
		}
		if len(behind) == 0 || longest >= w.wait {
			return ps, behind, nil
		}
		if !told && w.progress != nil {
			slices.Sort(names)
			fmt.Fprintf(w.progress, "trellis check: %d proxies behind their snapshot (%s); watching them for up to %v\n", len(names), strings.Join(names, ", "), w.wait)
			told = true
		}
		if err := w.sleep(ctx, min(w.every, w.wait-longest)); err != nil {
			return nil, nil, err
		}
	}
}

// caChain returns the CA certificates the server presents above its own
// (an imported intermediate and those above it), the roots of the trust
// bundle aside: their expiry is checked with the roots.
func caChain(ctx context.Context, c *client.Client, roots v1.Roots) ([]check.Cert, error) {
	host := c.Host()
	name, _, err := net.SplitHostPort(host)
	if err != nil {
		return nil, fmt.Errorf("server address %s: %w", host, err)
	}
	cfg := c.TLSConfig()
	cfg.ServerName = name
	d := tls.Dialer{Config: cfg}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	isRoot := map[string]bool{}
	for _, r := range roots.Certs {
		isRoot[r.Fingerprint] = true
	}
	var out []check.Cert
	for _, cert := range conn.(*tls.Conn).ConnectionState().PeerCertificates[1:] {
		if isRoot[certs.Fingerprint(cert)] || bytes.Equal(cert.RawSubject, cert.RawIssuer) {
			continue
		}
		out = append(out, check.Cert{Subject: cert.Subject.String(), NotAfter: cert.NotAfter})
	}
	return out, nil
}

// localFindings looks at this machine's files of the mesh: the context
// file trellis up writes, the token file it names, and the secrets of a
// local server's data dir.
func localFindings(e *env, dataDir string) []check.Finding {
	var files []check.LocalFile
	add := func(path, role string, secret bool) {
		if path == "" || slices.ContainsFunc(files, func(f check.LocalFile) bool { return f.Path == path }) {
			return
		}
		fi, err := os.Stat(path)
		if err != nil {
			return // nothing to protect
		}
		files = append(files, check.LocalFile{Path: path, Role: role, Mode: fi.Mode(), Secret: secret})
	}
	var out []check.Finding
	path := ContextFile()
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		out = append(out, check.Finding{Severity: check.Warning, Check: "context", Where: path, What: "cannot read the context file: " + err.Error(), Fix: "fix its permissions, or remove it"})
	default:
		var c Context
		if err := json.Unmarshal(b, &c); err != nil {
			out = append(out, check.Finding{Severity: check.Error, Check: "context", Where: path,
				What: "the context file is not valid: " + err.Error() + "; commands without TRELLIS_ADDR fail", Fix: "rm " + path + " (trellis up writes it again)"})
			break
		}
		out = append(out, check.Context(&check.ContextFile{Path: path, PID: c.PID, Alive: c.PID > 0 && processAlive(c.PID)})...)
		add(path, "context file", false)
		add(c.TokenFile, "admin token", true)
		if dataDir == "" && c.TokenFile != "" {
			dataDir = filepath.Dir(c.TokenFile)
		}
	}
	if dataDir != "" {
		add(filepath.Join(dataDir, adminTokenFile), "admin token", true)
		add(filepath.Join(dataDir, "ca-key.pem"), "CA key", true)
		add(filepath.Join(dataDir, storeSecretFile), "store secret", true)
	}
	return append(out, check.Files(files)...)
}

// printFindings writes findings for people: problems first, errors before
// warnings, each with what to do, then what is fine, then a count.
func printFindings(w io.Writer, fs []check.Finding) {
	rank := map[check.Severity]int{check.Error: 0, check.Warning: 1, check.OK: 2}
	fs = slices.Clone(fs)
	slices.SortStableFunc(fs, func(a, b check.Finding) int { return rank[a.Severity] - rank[b.Severity] })
	for _, f := range fs {
		line := f.What
		if f.Where != "" {
			line = f.Where + ": " + f.What
		}
		fmt.Fprintf(w, "%-7s  %-10s  %s\n", f.Severity, f.Check, line)
		if f.Fix != "" {
			fmt.Fprintf(w, "%-7s  %-10s  fix: %s\n", "", "", f.Fix)
		}
	}
	nErr, nWarn := check.Count(fs, check.Error), check.Count(fs, check.Warning)
	switch {
	case nErr > 0:
		fmt.Fprintf(w, "\n%s, %s: the mesh has problems\n", plural(nErr, "error"), plural(nWarn, "warning"))
	case nWarn > 0:
		fmt.Fprintf(w, "\n%s, no errors\n", plural(nWarn, "warning"))
	default:
		fmt.Fprintln(w, "\nall checks passed")
	}
}

// warnApplied runs the cross-resource checks of trellis check on resources
// just applied, judged with the store's resources and instances, and
// prints what concerns them as warnings: they are applied all the same
// (a Route may name a version before it starts). A failure to read the
// mesh is one warning too: the apply itself succeeded.
func warnApplied(ctx context.Context, e *env, c *client.Client, applied []v1.Resource) {
	m := check.Mesh{Now: time.Now()}
	var err error
	for _, k := range v1.Kinds {
		var rs []v1.Resource
		if rs, err = c.List(ctx, k); err != nil {
			break
		}
		m.Resources = append(m.Resources, rs...)
	}
	if err == nil {
		m.Instances, err = c.Instances(ctx, "")
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "trellis apply: warning: applied, but could not check them against the mesh: %s\n", oneLine(err))
		return
	}
	for _, f := range check.Resources(applied, m) {
		fmt.Fprintf(e.stderr, "trellis apply: warning: %s: %s (applied all the same; %s)\n", f.Where, f.What, f.Fix)
	}
}

// plural is "1 error", "2 errors".
func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
