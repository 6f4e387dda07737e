package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"gopkg.in/yaml.v3"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/certs"
	"github.com/trellis-mesh/trellis/internal/identity"
)

func runApply(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "apply", "apply -f FILE [-f FILE ...]")
	var files listFlag
	fs.Var(&files, "f", "YAML file of resources, - for standard input (repeatable; all are applied together or none)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(files) == 0 {
		return usageErr("-f FILE is required")
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	var all []v1.Resource
	var errs []error
	for _, f := range files {
		var r io.Reader = os.Stdin
		name := "<stdin>"
		if f != "-" {
			fh, err := os.Open(f)
			if err != nil {
				return err
			}
			defer fh.Close()
			r, name = fh, f
		}
		res, err := v1.DecodeYAML(name, r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		all = append(all, res...)
	}
	if len(errs) > 0 {
		return fmt.Errorf("nothing applied:\n  %s", strings.ReplaceAll(errors.Join(errs...).Error(), "\n", "\n  "))
	}
	c, err := connect(e)
	if err != nil {
		return err
	}
	applied, err := c.Apply(ctx, all)
	if err != nil {
		return err
	}
	for _, a := range applied {
		fmt.Fprintf(e.stdout, "%s applied\n", a)
	}
	warnApplied(ctx, e, c, all)
	return nil
}

// kindOf maps what users type to an API kind.
func kindOf(s string) (string, bool) {
	switch strings.ToLower(s) {
	case "mesh", "meshes":
		return v1.KindMesh, true
	case "service", "services":
		return v1.KindService, true
	case "intention", "intentions":
		return v1.KindIntention, true
	case "route", "routes":
		return v1.KindRoute, true
	case "gateway", "gateways":
		return v1.KindGateway, true
	}
	return "", false
}

// getWhats are what `get` shows: the live views, then the resource kinds.
var getWhats = []string{"services", "instances", "proxies", "tokens", "mesh", "service", "intention", "route", "gateway"}

// kinds are the resource kinds, as `delete` and `get` take them.
var kinds = []string{"mesh", "service", "intention", "route", "gateway"}

// unknownKind is the error for a kind the CLI does not know: every kind it
// does, and the nearest.
func unknownKind(what string, known []string) error {
	return usageErr("unknown kind %q%s; want one of %s", what, didYouMean(what, known), strings.Join(known, ", "))
}

func runGet(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "get", "get services|instances|proxies|tokens|KIND [NAME] [-o table|json|yaml]")
	out := fs.String("o", "table", "output format: table, json or yaml")
	if err := parseSub(fs, reorder(args)); err != nil {
		return err
	}
	if fs.NArg() == 0 || fs.NArg() > 2 {
		return usageErr("want: get %s [NAME]", strings.Join(getWhats, "|"))
	}
	if *out != "table" && *out != "json" && *out != "yaml" {
		return usageErr("-o %q: want table, json or yaml", *out)
	}
	what, name := fs.Arg(0), fs.Arg(1)
	if _, ok := kindOf(what); !ok && !slices.Contains([]string{"services", "instances", "proxies", "tokens"}, strings.ToLower(what)) {
		return unknownKind(what, getWhats)
	}
	c, err := connect(e)
	if err != nil {
		return err
	}
	switch strings.ToLower(what) {
	case "services":
		v, err := c.Services(ctx)
		if err != nil {
			return err
		}
		return show(e.stdout, *out, v, func(tw io.Writer) {
			fmt.Fprintln(tw, "NAME\tPROTOCOL\tINSTANCES\tHEALTHY\tDECLARED")
			for _, s := range v {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%v\n", s.Name, s.Protocol, s.Instances, s.Healthy, s.Declared)
			}
		})
	case "instances":
		v, err := c.Instances(ctx, name)
		if err != nil {
			return err
		}
		return show(e.stdout, *out, v, func(tw io.Writer) {
			fmt.Fprintln(tw, "ID\tSERVICE\tVERSION\tADDRESS\tNETWORK\tHEALTHY\tREGISTERED")
			for _, i := range v {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s:%d\t%s\t%v\t%s\n", i.ID, i.Service, dash(i.Version), i.Address, i.Port, v1.EffectiveNetwork(i.Network), i.Healthy, age(i.RegisteredAt))
			}
		})
	case "proxies":
		v, err := c.Proxies(ctx)
		if err != nil {
			return err
		}
		return show(e.stdout, *out, v, func(tw io.Writer) {
			fmt.Fprintln(tw, "INSTANCE\tSERVICE\tNETWORK\tSENT\tACKED\tERROR\tPATHS")
			for _, p := range v {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Instance, p.Service, v1.EffectiveNetwork(p.Network), p.SentVersion, dash(p.AckedVersion), dash(p.Error), dash(paths(p.Paths)))
			}
		})
	case "tokens":
		v, err := c.Tokens(ctx)
		if err != nil {
			return err
		}
		return show(e.stdout, *out, v, func(tw io.Writer) {
			fmt.Fprintln(tw, "ID\tROLE\tSERVICES\tDESCRIPTION\tCREATED\tEXPIRES\tLAST USED")
			for _, t := range v {
				expires, used := "never", "never"
				if t.ExpiresAt != nil {
					expires = t.ExpiresAt.Local().Format(time.DateTime)
					if t.Expired(time.Now()) {
						expires += " (expired)"
					}
				}
				if t.LastUsedAt != nil {
					// Recorded to the minute: say no more than that.
					if d := time.Since(*t.LastUsedAt); d < time.Minute {
						used = "under a minute ago"
					} else {
						used = d.Truncate(time.Minute).String() + " ago"
					}
				}
				role := "service"
				switch {
				case t.Admin:
					role = "admin"
				case t.Viewer:
					role = "viewer"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, role, dash(strings.Join(t.Services, ",")), dash(t.Description), age(t.CreatedAt), expires, used)
			}
		})
	}
	kind, ok := kindOf(what)
	if !ok {
		return unknownKind(what, getWhats)
	}
	var res []v1.Resource
	if name != "" {
		r, err := c.Get(ctx, kind, name)
		if err != nil {
			return err
		}
		// One named resource prints as itself, in JSON as in YAML.
		if *out == "json" {
			return show(e.stdout, *out, r, nil)
		}
		res = []v1.Resource{r}
		if *out == "table" {
			*out = "yaml"
			if kind == v1.KindRoute && canaryRule(r.Route) {
				// The canary's status follows as YAML comments: the
				// output still applies as it is.
				defer func() {
					st, err := c.Canary(ctx, name)
					if err == nil {
						showCanary(e.stdout, st)
					} else if !client.IsNotFound(err) {
						fmt.Fprintf(e.stdout, "# canary: status unavailable: %v\n", err)
					}
				}()
			}
		}
	} else if res, err = c.List(ctx, kind); err != nil {
		return err
	}
	if *out == "yaml" {
		for i, r := range res {
			if i > 0 {
				fmt.Fprintln(e.stdout, "---")
			}
			b, err := yaml.Marshal(r)
			if err != nil {
				return err
			}
			e.stdout.Write(b)
		}
		return nil
	}
	return show(e.stdout, *out, res, func(tw io.Writer) {
		switch kind {
		case v1.KindIntention:
			fmt.Fprintln(tw, "NAME\tSOURCE\tDESTINATION\tACTION")
			for _, r := range res {
				action := r.Intention.Action
				if n := len(r.Intention.Permissions); n > 0 {
					action = fmt.Sprintf("%d HTTP permissions", n)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, r.Intention.Source, r.Intention.Destination, action)
			}
		case v1.KindService:
			fmt.Fprintln(tw, "NAME\tPROTOCOL\tPORT")
			for _, r := range res {
				fmt.Fprintf(tw, "%s\t%s\t%d\n", r.Name, r.Service.EffectiveProtocol(), r.Service.Port)
			}
		case v1.KindRoute:
			fmt.Fprintln(tw, "SERVICE\tRULES\tFIRST RULE TARGETS")
			for _, r := range res {
				var targets []string
				for _, t := range r.Route.Rules[0].Targets {
					targets = append(targets, fmt.Sprintf("%s=%d", t.Version, t.Weight))
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\n", r.Name, len(r.Route.Rules), strings.Join(targets, ","))
			}
		case v1.KindGateway:
			fmt.Fprintln(tw, "NAME\tLISTENERS")
			for _, r := range res {
				var ls []string
				for _, l := range r.Gateway.Listeners {
					ls = append(ls, fmt.Sprintf("%s:%d", l.Protocol, l.Port))
				}
				fmt.Fprintf(tw, "%s\t%s\n", r.Name, strings.Join(ls, ","))
			}
		case v1.KindMesh:
			fmt.Fprintln(tw, "NAME\tMTLS\tDEFAULT POLICY")
			for _, r := range res {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, r.Mesh.EffectiveMTLS(), r.Mesh.EffectiveDefaultPolicy())
			}
		}
	})
}

// reorder moves flags after positional arguments to the front, so that
// `get services -o json` works as users expect.
func reorder(args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "-") && len(a) > 1 {
			flags = append(flags, a)
			if !strings.Contains(a, "=") && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
			continue
		}
		pos = append(pos, a)
	}
	return append(flags, pos...)
}

func show(w io.Writer, format string, v any, table func(io.Writer)) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		var generic any
		if err := yaml.Unmarshal(b, &generic); err != nil {
			return err
		}
		return yaml.NewEncoder(w).Encode(generic)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

func runDelete(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "delete", "delete KIND NAME   (KIND: "+strings.Join(kinds, ", ")+"; an intention also as: delete intention SRC DST)")
	if err := parseSub(fs, args); err != nil {
		return err
	}
	if fs.NArg() < 2 || fs.NArg() > 3 {
		return usageErr("want: delete KIND NAME, or delete intention SRC DST")
	}
	kind, ok := kindOf(fs.Arg(0))
	if !ok {
		return unknownKind(fs.Arg(0), kinds)
	}
	if fs.NArg() == 3 && kind != v1.KindIntention {
		return usageErr("want: delete KIND NAME (only an intention is named by SRC DST)")
	}
	c, err := connect(e)
	if err != nil {
		return err
	}
	name := fs.Arg(1)
	if kind == v1.KindIntention {
		if name, err = intentionName(ctx, c, fs.Args()[1:]); err != nil {
			return err
		}
	}
	if err := c.Delete(ctx, kind, name); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s/%s deleted\n", kind, name)
	return nil
}

// intentionName finds the intention args name: its name, a name written
// with "*" where the store has "any" (as `intention allow '*' X` names
// it), or its source and destination, whatever its name.
func intentionName(ctx context.Context, c *client.Client, args []string) (string, error) {
	src, dst := "", ""
	if len(args) == 2 {
		src, dst = args[0], args[1]
	}
	all, err := c.List(ctx, v1.KindIntention)
	if err != nil {
		return "", err
	}
	var names []string
	for _, r := range all {
		if src != "" && r.Intention.Source == src && r.Intention.Destination == dst {
			return r.Name, nil
		}
		if len(args) == 1 && (r.Name == args[0] || r.Name == strings.ReplaceAll(args[0], "*", "any")) {
			return r.Name, nil
		}
		names = append(names, r.Name)
	}
	if src != "" {
		return "", fmt.Errorf("no intention from %s to %s (see trellis get intentions)", src, dst)
	}
	return "", fmt.Errorf("no intention named %q%s (see trellis get intentions)", args[0], didYouMean(args[0], names))
}

func runIntention(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "intention", "intention allow|deny SRC DST")
	if err := parseSub(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 3 || (fs.Arg(0) != v1.Allow && fs.Arg(0) != v1.Deny) {
		return usageErr("want: intention allow|deny SRC DST")
	}
	action, src, dst := fs.Arg(0), fs.Arg(1), fs.Arg(2)
	if src != "*" {
		if err := identity.ValidateServiceName(src); err != nil {
			return usageErr("source: %v", err)
		}
	}
	if err := identity.ValidateServiceName(dst); err != nil {
		return usageErr("destination: %v", err)
	}
	c, err := connect(e)
	if err != nil {
		return err
	}
	// Update the intention that already covers this pair, whatever its name.
	name := strings.ReplaceAll(src, "*", "any") + "." + dst
	existing, err := c.List(ctx, v1.KindIntention)
	if err != nil {
		return err
	}
	for _, r := range existing {
		if r.Intention.Source == src && r.Intention.Destination == dst {
			name = r.Name
		}
	}
	res := v1.Resource{Kind: v1.KindIntention, Name: name, Intention: &v1.IntentionSpec{Source: src, Destination: dst, Action: action}}
	if _, err := c.Apply(ctx, []v1.Resource{res}); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "intention %s: %s -> %s %s\n", name, src, dst, action)
	return nil
}

func runToken(ctx context.Context, e *env, args []string) error {
	const usage = "token create --service NAME... | --admin | --viewer [--ttl D] [-o FILE] | token list | token delete ID"
	if len(args) == 0 {
		return usageErr("want: %s", usage)
	}
	if err := helpFor(e, usage, args[:1]); err != nil {
		return err
	}
	if len(args) > 1 && args[0] != "create" {
		if err := helpFor(e, "token "+args[0]+map[string]string{"delete": " ID"}[args[0]], args[1:]); err != nil {
			return err
		}
	}
	switch args[0] {
	case "create":
		fs := newFlags(e, "token create", "token create --service NAME [--service NAME ...] | --admin | --viewer [--ttl DURATION] [--description TEXT] [-o FILE]")
		var services listFlag
		fs.Var(&services, "service", "service the token may act as (repeatable)")
		admin := fs.Bool("admin", false, "make an admin token")
		viewer := fs.Bool("viewer", false, "make a read-only token: it reads what an admin reads (not tokens), for the dashboard, and changes nothing")
		desc := fs.String("description", "", "free text")
		ttl := fs.Duration("ttl", 0, "how long the token works, e.g. 720h (default: until deleted)")
		outFile := fs.String("o", "", "write the token to this new file, mode 0600, instead of standard output")
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if *viewer && (*admin || len(services) > 0) {
			return usageErr("--viewer makes a read-only token: not with --admin or --service")
		}
		if len(services) == 0 && !*admin && !*viewer {
			return usageErr("--service NAME is required (or --admin, or --viewer)")
		}
		for _, s := range services {
			if err := identity.ValidateServiceName(s); err != nil {
				return usageErr("--service: %v", err)
			}
		}
		if *ttl < 0 || *ttl > 0 && *ttl < 10*time.Second {
			return usageErr("--ttl %v: want at least 10s", *ttl)
		}
		req := v1.TokenRequest{Services: services, Admin: *admin, Viewer: *viewer, Description: *desc}
		if *ttl > 0 {
			req.TTL = ttl.String()
		}
		// The file is made before the token, so that a token is never
		// made that could not be saved.
		var f *os.File
		if *outFile != "" {
			var err error
			if f, err = os.OpenFile(*outFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
				return fmt.Errorf("-o: %w", err)
			}
			defer f.Close()
		} else {
			warnSharedStdout(e)
		}
		c, err := connect(e)
		if err != nil {
			return err
		}
		t, err := c.CreateToken(ctx, req)
		if err != nil {
			if f != nil {
				os.Remove(*outFile)
			}
			return err
		}
		if f == nil {
			fmt.Fprintln(e.stdout, t.Secret)
			return nil
		}
		if _, err := fmt.Fprintln(f, t.Secret); err != nil {
			return fmt.Errorf("-o: %w", err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("-o: %w", err)
		}
		fmt.Fprintf(e.stdout, "token %s written to %s (mode 0600)\n", t.ID, *outFile)
		return nil
	case "list":
		return runGet(ctx, e, []string{"tokens"})
	case "delete":
		if len(args) != 2 {
			return usageErr("want: token delete ID")
		}
		c, err := connect(e)
		if err != nil {
			return err
		}
		if err := c.DeleteToken(ctx, args[1]); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "token %s deleted\n", args[1])
		return nil
	}
	return usageErr("unknown token command %q (want create, list or delete)", args[0])
}

func runCA(ctx context.Context, e *env, args []string) error {
	const usage = "ca roots | ca add-root FILE | ca rotate | ca remove-root FINGERPRINT|FILE"
	if len(args) == 0 {
		return usageErr("want: %s", usage)
	}
	if err := helpFor(e, usage, args[:1]); err != nil {
		return err
	}
	if len(args) > 1 && (args[0] == "roots" || args[0] == "add-root") {
		if err := helpFor(e, "ca "+args[0]+map[string]string{"add-root": " FILE"}[args[0]], args[1:]); err != nil {
			return err
		}
	}
	switch args[0] {
	case "roots":
		c, err := connect(e)
		if err != nil {
			return err
		}
		r, err := c.Roots(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "trust domain: %s\n", r.TrustDomain)
		for _, fp := range certs.Fingerprints([]byte(r.RootsPEM)) {
			fmt.Fprintf(e.stderr, "root: %s\n", fp)
		}
		fmt.Fprint(e.stdout, r.RootsPEM)
		return nil
	case "add-root":
		if len(args) != 2 {
			return usageErr("want: ca add-root FILE")
		}
		pemBytes, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		c, err := connect(e)
		if err != nil {
			return err
		}
		if err := c.AddRoots(ctx, pemBytes); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "added %s to the trust bundle; restart the servers with the new CA once every proxy has acknowledged it (trellis get proxies)\n", args[1])
		return nil
	case "remove-root":
		fs := newFlags(e, "ca remove-root", "ca remove-root FINGERPRINT|FILE [--force]")
		force := fs.Bool("force", false, "remove a rotation's old root before the certificates it signed have expired")
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return usageErr("want: ca remove-root FINGERPRINT|FILE (trellis ca roots lists the fingerprints)")
		}
		fp := fs.Arg(0)
		if b, err := os.ReadFile(fp); err == nil {
			fps := certs.Fingerprints(b)
			if len(fps) != 1 {
				return usageErr("%s: want one PEM certificate, found %d", fp, len(fps))
			}
			fp = fps[0]
		}
		c, err := connect(e)
		if err != nil {
			return err
		}
		if _, err := c.RemoveRoot(ctx, v1.RemoveRootRequest{Fingerprint: fp, Force: *force}); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "removed root %s from the trust bundle\n", fp)
		return nil
	case "rotate":
		return runRotate(ctx, e, args[1:])
	}
	return usageErr("unknown ca command %q (want roots, add-root, rotate or remove-root)", args[0])
}

// runRotate drives a root rotation to its end, resuming one in progress:
// prepare, wait until every proxy trusts the new root, switch the signing
// key, wait until the old key's certificates have expired, retire the old
// root.
func runRotate(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "ca rotate", "ca rotate [--ack-timeout DURATION] [--no-retire] [--force]")
	ackTimeout := fs.Duration("ack-timeout", 5*time.Minute, "how long to wait for every proxy to trust the new root")
	noRetire := fs.Bool("no-retire", false, "stop after the switch; remove the old root later with ca remove-root")
	force := fs.Bool("force", false, "switch even if some proxies have not acknowledged the new root")
	poll := fs.Duration("poll", time.Second, "how often to look at the proxies")
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := connect(e)
	if err != nil {
		return err
	}
	r, err := c.Rotation(ctx)
	if err != nil {
		return err
	}
	if r.Phase == "" || r.Phase == v1.RotationRetired {
		if r, err = c.Rotate(ctx, v1.RotationRequest{Action: "prepare"}); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "new root %s added to the trust bundle\n", r.NewRoot[:16])
	} else {
		fmt.Fprintf(e.stdout, "resuming the rotation to root %s (%s)\n", r.NewRoot[:16], r.Phase)
	}
	if r.Phase == v1.RotationPrepared {
		deadline := time.Now().Add(*ackTimeout)
		for {
			if r, err = c.Rotation(ctx); err != nil {
				return err
			}
			if len(r.Waiting) == 0 || *force {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d of %d proxies did not acknowledge the new root within %v: %s; the old key still signs, so nothing is broken: run trellis ca rotate again once they are back, or with --force", len(r.Waiting), r.Proxies, *ackTimeout, strings.Join(r.Waiting, ", "))
			}
			if err := sleepCtx(ctx, *poll); err != nil {
				return err
			}
		}
		fmt.Fprintf(e.stdout, "%d of %d proxies trust the new root\n", r.Trusting, r.Proxies)
		if r, err = c.Rotate(ctx, v1.RotationRequest{Action: "switch", Force: *force}); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "the servers sign with the new key; certificates of the old one expire by %s\n", r.OldSVIDsUntil.Local().Format(time.DateTime))
	}
	if r.Phase != v1.RotationActive {
		return nil
	}
	if *noRetire {
		fmt.Fprintf(e.stdout, "after %s: trellis ca remove-root %s\n", r.OldSVIDsUntil.Local().Format(time.DateTime), r.OldRoot)
		return nil
	}
	if wait := time.Until(*r.OldSVIDsUntil); wait > 0 {
		fmt.Fprintf(e.stdout, "waiting %v for the old key's certificates to expire (Ctrl-C is safe: run trellis ca rotate again to resume)\n", wait.Round(time.Second))
		if err := sleepCtx(ctx, wait); err != nil {
			return err
		}
	}
	if _, err := c.RemoveRoot(ctx, v1.RemoveRootRequest{Fingerprint: r.OldRoot}); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "old root %s retired; the rotation is done\n", r.OldRoot[:16])
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// warnSharedStdout warns when standard output is a file that other users
// can read: `trellis token create > file` would leave the secret there.
func warnSharedStdout(e *env) {
	f, ok := e.stdout.(*os.File)
	if !ok {
		return
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 == 0 {
		return
	}
	fmt.Fprintf(e.stderr, "warning: standard output is a file other users can read (mode %v); use -o FILE to write the token at mode 0600\n", fi.Mode().Perm())
}

// paths renders a proxy's upstream paths on one line:
// "api: direct; db: via gateway network b".
func paths(ps []v1.UpstreamPath) string {
	parts := make([]string, 0, len(ps))
	for _, p := range ps {
		s := p.Service + ": " + p.Path
		if p.Unreachable != "" {
			s += " (" + p.Unreachable + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func canaryRule(r *v1.RouteSpec) bool {
	for _, rule := range r.Rules {
		if rule.Canary != nil {
			return true
		}
	}
	return false
}

// showCanary writes a canary's status as YAML comments.
func showCanary(w io.Writer, st v1.CanaryStatus) {
	fmt.Fprintf(w, "# canary (rule %s): %s, %s at %d %%, %s at %d %% (step %d)\n", st.Rule, st.State, st.Version, st.Weight, st.Stable, 100-st.Weight, st.Step+1)
	if d := st.Last; d != nil {
		rate := "-"
		if d.SuccessRate != nil {
			rate = fmt.Sprintf("%.2f %%", *d.SuccessRate)
		}
		callers := ""
		if d.CallerSuccessRate != nil {
			callers = fmt.Sprintf("; callers: requests %d, success %.2f %%", d.CallerRequests, *d.CallerSuccessRate)
		}
		fmt.Fprintf(w, "# last decision %s: %s: %s (requests %d, success %s, p99 %.1f ms%s)\n",
			d.At.Local().Format(time.TimeOnly), d.Action, d.Reason, d.Requests, rate, d.P99Ms, callers)
	}
	fmt.Fprintln(w, "# events:")
	for _, ev := range st.Events {
		fmt.Fprintf(w, "#   %s  %s\n", ev.At.Local().Format(time.DateTime), ev.Message)
	}
}
