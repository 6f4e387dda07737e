//go:build !proxyonly

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
	"github.com/trellis-mesh/trellis/internal/inject"
)

const injectUsage = "inject validate|ecs|cloudformation|kubernetes|compose|systemd|mesh -f MANIFEST --policy POLICY --version V | inject webhook | inject webhook-config"

// runInject: trellis inject FORMAT -f MANIFEST --policy POLICY --version V,
// and the Kubernetes webhook's two commands.
func runInject(ctx context.Context, e *env, args []string) error {
	formats := map[string]func(*inject.Plan) ([]byte, error){
		"validate":       nil,
		"ecs":            func(p *inject.Plan) ([]byte, error) { return jsonOut(p.ECS()) },
		"cloudformation": func(p *inject.Plan) ([]byte, error) { return jsonOut(p.CloudFormation()) },
		"kubernetes":     (*inject.Plan).Kubernetes,
		"compose": func(p *inject.Plan) ([]byte, error) {
			c, err := p.Compose()
			if err != nil {
				return nil, err
			}
			return yamlOut(c)
		},
		"mesh": meshOut,
		// A plain host's files: written by name into -o DIR, or listed.
		"systemd": func(p *inject.Plan) ([]byte, error) {
			fs, err := p.Host()
			if err != nil {
				return nil, err
			}
			return fs.Listing(), nil
		},
	}
	if len(args) == 0 {
		return usageErr(injectUsage)
	}
	if err := helpFor(e, injectUsage, args[:1]); err != nil {
		return err
	}
	switch args[0] {
	case "webhook":
		return runWebhook(ctx, e, args[1:])
	case "webhook-config":
		return runWebhookConfig(e, args[1:])
	}
	format, args := args[0], args[1:]
	if _, ok := formats[format]; !ok {
		return usageErr("unknown %q: %s", format, injectUsage)
	}
	fs := newFlags(e, "inject "+format, "inject "+format+" -f MANIFEST --policy POLICY --version V [-o FILE]")
	manifest := fs.String("f", "", "the service manifest (Task, AppContainer, VirtualNode); for kubernetes also a file of Kubernetes objects")
	policy := fs.String("policy", "", "the platform policy (kind: PlatformPolicy)")
	version := fs.String("version", "", "version label of this deployment, such as the commit's first 8 characters")
	envName := fs.String("env", "", "apply the manifest's Environments entry of this name")
	out := fs.String("o", "", "write to this file instead of stdout (written only when everything is valid); for systemd a directory, where each file goes by its name")
	output := fs.String("output", "text", "diagnostics as text or json")
	apply := fs.Bool("apply", false, "register this version with the control plane: the Service if new, the backends' intentions, a Route holding it at weight 0")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return usageErr("unexpected argument %q", fs.Arg(0))
	case *manifest == "":
		return usageErr("-f MANIFEST is required")
	case *policy == "":
		return usageErr("--policy POLICY is required")
	case *output != "text" && *output != "json":
		return usageErr("--output %q: want text or json", *output)
	}
	mb, err := os.ReadFile(*manifest)
	if err != nil {
		return usageErr("%v", err)
	}
	pb, err := os.ReadFile(*policy)
	if err != nil {
		return usageErr("%v", err)
	}
	if format == "kubernetes" && inject.IsKubernetes(mb) {
		if *apply {
			return usageErr("--apply needs a manifest (its VirtualNode.Backends); %s holds Kubernetes objects", *manifest)
		}
		// Kubernetes objects in, the same objects with the sidecar out;
		// the version comes from each pod, --version being the default.
		if *version != "" {
			if err := inject.ValidVersion(*version); err != nil {
				return usageErr("--version: %v", err)
			}
		}
		pol, diags := inject.LoadPolicy(*policy, bytes.NewReader(pb))
		if err := report(e, diags, *output); err != nil {
			return err
		}
		in := &inject.Injector{Policy: pol, Version: *version}
		b, err := in.InjectObjects(*manifest, bytes.NewReader(mb))
		if err != nil {
			fmt.Fprintln(e.stderr, err)
			fmt.Fprintln(e.stderr, "nothing written")
			return errInvalid
		}
		return writeOut(e, *out, b)
	}
	if err := inject.ValidVersion(*version); err != nil {
		return usageErr("--version: %v", err)
	}
	plan, diags := inject.Load(inject.Input{
		ManifestFile: *manifest, Manifest: bytes.NewReader(mb), PolicyFile: *policy, Policy: bytes.NewReader(pb),
		Version: *version, Env: *envName,
	})
	if err := report(e, diags, *output); err != nil {
		return err
	}
	var b []byte
	var hostFiles inject.HostFiles
	if format == "systemd" {
		if hostFiles, err = plan.Host(); err != nil {
			fmt.Fprintln(e.stderr, err)
			fmt.Fprintln(e.stderr, "nothing written")
			return errInvalid
		}
		b = hostFiles.Listing()
	} else if format == "validate" {
		if *output == "text" {
			fmt.Fprintf(e.stderr, "%s and %s are valid: %s\n", *manifest, *policy, plan.Name)
		}
	} else if b, err = formats[format](plan); err != nil {
		return err
	}
	// Registered before anything is written: a failed registration
	// leaves no output for the next pipeline step to deploy.
	if *apply {
		if err := register(ctx, e, plan); err != nil {
			return err
		}
	}
	if format == "validate" {
		return nil
	}
	if format == "systemd" && *out != "" {
		if err := hostFiles.WriteDir(*out); err != nil {
			return err
		}
		for _, f := range hostFiles {
			fmt.Fprintf(e.stderr, "wrote %s\n", filepath.Join(*out, f.Name))
		}
		return nil
	}
	return writeOut(e, *out, b)
}

// register applies the plan's registration against what the control
// plane holds of the service now.
func register(ctx context.Context, e *env, plan *inject.Plan) error {
	c, err := connect(e)
	if err != nil {
		return err
	}
	var d inject.Deployed
	get := func(kind string) (*v1.Resource, error) {
		r, err := c.Get(ctx, kind, plan.Service)
		switch {
		case client.IsNotFound(err):
			return nil, nil
		case err != nil:
			return nil, fmt.Errorf("register %s: %w", plan.Name, err)
		}
		return &r, nil
	}
	if d.Service, err = get(v1.KindService); err != nil {
		return err
	}
	if d.Route, err = get(v1.KindRoute); err != nil {
		return err
	}
	insts, err := c.Instances(ctx, plan.Service)
	if err != nil && !client.IsNotFound(err) {
		return fmt.Errorf("register %s: %w", plan.Name, err)
	}
	for _, in := range insts {
		d.Versions = append(d.Versions, in.Version)
	}
	applied, err := c.Apply(ctx, plan.Registration(d))
	if err != nil {
		return fmt.Errorf("register %s: %w", plan.Name, err)
	}
	for _, a := range applied {
		fmt.Fprintf(e.stderr, "%s applied\n", a)
	}
	return nil
}

// report prints diagnostics as text on stderr, or as JSON on stdout
// whether there are any or not; it returns errInvalid if there are.
func report(e *env, diags inject.Diagnostics, output string) error {
	if output == "json" {
		if diags == nil {
			diags = inject.Diagnostics{}
		}
		b, _ := json.MarshalIndent(map[string]any{"valid": len(diags) == 0, "diagnostics": diags}, "", "  ")
		fmt.Fprintln(e.stdout, string(b))
	} else {
		for _, d := range diags {
			fmt.Fprintln(e.stderr, d.String())
		}
	}
	if len(diags) == 0 {
		return nil
	}
	if output == "text" {
		fmt.Fprintf(e.stderr, "%d problem(s); nothing written\n", len(diags))
	}
	return errInvalid
}

// writeOut writes b to stdout, or to the file out whole or not at all: a
// pipeline never finds half a file.
func writeOut(e *env, out string, b []byte) error {
	if out == "" {
		_, err := e.stdout.Write(b)
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".trellis-inject-*")
	if err != nil {
		return usageErr("%v", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}

func jsonOut(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	return append(b, '\n'), err
}

func yamlOut(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}

// meshOut writes the plan's mesh resources as YAML documents, for trellis
// apply -f -.
func meshOut(p *inject.Plan) ([]byte, error) {
	var b bytes.Buffer
	for i, r := range p.Mesh() {
		if i > 0 {
			b.WriteString("---\n")
		}
		out, err := yamlOut(r)
		if err != nil {
			return nil, err
		}
		b.Write(out)
	}
	return b.Bytes(), nil
}
