//go:build !proxyonly

package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/trellis-mesh/trellis/internal/appmesh"
)

const importUsage = "import appmesh -f FILE... [-o DIR] [--param NAME=VALUE]... [--strict] [--plan] [--output text|json]"

// importReport is the --output json answer.
type importReport struct {
	// Carried is true when every App Mesh setting carried over.
	Carried  bool              `json:"carried"`
	Findings []appmesh.Finding `json:"findings"`
	// Written lists the files written under -o DIR.
	Written []string `json:"written"`
	// Errors, when the input could not be read, and nothing was written.
	Errors []string `json:"errors,omitempty"`
}

// runImport: trellis import appmesh. Exit 0 when everything carried over,
// 1 when something did not (the report says what; files are written
// unless --strict), 2 when the input cannot be read (nothing written).
func runImport(_ context.Context, e *env, args []string) error {
	if err := helpFor(e, importUsage, args); err != nil {
		return err
	}
	if len(args) == 0 {
		return usageErr(importUsage)
	}
	if args[0] != "appmesh" {
		return usageErr("unknown source %q: %s", args[0], importUsage)
	}
	fs := newFlags(e, "import appmesh", importUsage)
	var files, params listFlag
	fs.Var(&files, "f", "an App Mesh file: a CloudFormation/SAM template (YAML or JSON), aws appmesh describe-* JSON, or appmesh.k8s.aws/v1beta2 resources (repeatable)")
	fs.Var(&params, "param", "NAME=VALUE for a template parameter, pseudo parameter (AWS::Region), export (!ImportValue) or RESOURCE.ATTR the template does not define (repeatable)")
	out := fs.String("o", "", "write the resources (mesh.yaml, services.yaml, intentions.yaml, routes.yaml, gateways.yaml) and manifests/ into this directory; default: print the resources")
	strict := fs.Bool("strict", false, "write nothing unless everything carries over")
	plan := fs.Bool("plan", false, "print the cutover plan: the commands that run both meshes side by side and move the traffic")
	output := fs.String("output", "text", "the report as text (stderr) or json (stdout)")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return usageErr("unexpected argument %q", fs.Arg(0))
	case len(files) == 0:
		return usageErr("-f FILE is required")
	case *output != "text" && *output != "json":
		return usageErr("--output %q: want text or json", *output)
	}
	opt := appmesh.Options{Params: map[string]string{}}
	for _, p := range params {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return usageErr("--param %q: want NAME=VALUE", p)
		}
		opt.Params[k] = v
	}
	unreadable := func(err error) error {
		var msgs []string
		for _, line := range strings.Split(err.Error(), "\n") {
			msgs = append(msgs, line)
		}
		if *output == "json" {
			b, _ := json.MarshalIndent(importReport{Findings: []appmesh.Finding{}, Written: []string{}, Errors: msgs}, "", "  ")
			fmt.Fprintf(e.stdout, "%s\n", b)
		} else {
			for _, m := range msgs {
				fmt.Fprintln(e.stderr, m)
			}
			fmt.Fprintln(e.stderr, "nothing written")
		}
		return errUnreadable
	}
	var objs []appmesh.Object
	var errs []error
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		o, err := appmesh.Read(name, f, opt)
		f.Close()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		objs = append(objs, o...)
	}
	if len(errs) > 0 {
		return unreadable(errors.Join(errs...))
	}
	res, err := appmesh.Convert(objs)
	if err != nil {
		return unreadable(err)
	}
	outFiles, err := res.Files()
	if err != nil {
		return unreadable(err)
	}
	carried := res.Report.Carried()
	rep := importReport{Carried: carried, Findings: res.Report.Findings, Written: []string{}}
	if rep.Findings == nil {
		rep.Findings = []appmesh.Finding{}
	}
	write := !*strict || carried
	if *out != "" && write {
		if err := writeFiles(*out, outFiles); err != nil {
			return err
		}
		for _, f := range outFiles {
			rep.Written = append(rep.Written, filepath.Join(*out, f.Name))
		}
	}
	if *plan {
		fmt.Fprint(e.stdout, appmesh.Plan(res, *out))
	} else if *out == "" && *output == "text" && write {
		for i, f := range outFiles {
			if i > 0 {
				fmt.Fprintln(e.stdout, "---")
			}
			fmt.Fprintf(e.stdout, "# ==> %s <==\n%s", f.Name, f.Data)
		}
	}
	if *output == "json" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		fmt.Fprintf(e.stdout, "%s\n", b)
	} else {
		res.Report.WriteText(e.stderr)
		switch {
		case carried:
			fmt.Fprintln(e.stderr, "everything carried over")
		case !write:
			fmt.Fprintln(e.stderr, "some settings do not carry over (above); nothing written (--strict)")
		default:
			fmt.Fprintln(e.stderr, "some settings do not carry over (above)")
		}
	}
	if !carried {
		return errInvalid
	}
	return nil
}

// writeFiles writes each file beside its final name and renames it in
// place, so that no file is ever half written.
func writeFiles(dir string, files []appmesh.File) error {
	for _, f := range files {
		path := filepath.Join(dir, f.Name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, f.Data, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	return nil
}
