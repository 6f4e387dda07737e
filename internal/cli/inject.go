package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"

	"github.com/trellis-mesh/trellis/internal/inject"
)

// errInvalid marks input that failed validation: exit code 1, with the
// diagnostics already printed.
var errInvalid = errors.New("invalid input")

// runInject: trellis inject validate|ecs|compose|mesh -f MANIFEST --policy POLICY --version V.
func runInject(_ context.Context, e *env, args []string) error {
	formats := map[string]func(*inject.Plan) ([]byte, error){
		"validate":       nil,
		"ecs":            func(p *inject.Plan) ([]byte, error) { return jsonOut(p.ECS()) },
		"compose":        func(p *inject.Plan) ([]byte, error) { return yamlOut(p.Compose()) },
		"cloudformation": func(p *inject.Plan) ([]byte, error) { return jsonOut(p.CloudFormation()) },
		"mesh":           meshOut,
	}
	if len(args) == 0 || formats[args[0]] == nil && args[0] != "validate" {
		return usageErr("inject validate|ecs|compose|mesh -f MANIFEST --policy POLICY --version V")
	}
	format, args := args[0], args[1:]
	fs := newFlags(e, "inject "+format, "inject "+format+" -f MANIFEST --policy POLICY --version V [-o FILE]")
	manifest := fs.String("f", "", "the service manifest (Task, AppContainer, VirtualNode)")
	policy := fs.String("policy", "", "the platform policy (kind: PlatformPolicy)")
	version := fs.String("version", "", "version label of this deployment, such as the commit's first 8 characters")
	envName := fs.String("env", "", "apply the manifest's Environments entry of this name")
	out := fs.String("o", "", "write to this file instead of stdout (written only when everything is valid)")
	output := fs.String("output", "text", "diagnostics as text or json")
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
	if err := inject.ValidVersion(*version); err != nil {
		return usageErr("--version: %v", err)
	}
	mf, err := os.Open(*manifest)
	if err != nil {
		return usageErr("%v", err)
	}
	defer mf.Close()
	pf, err := os.Open(*policy)
	if err != nil {
		return usageErr("%v", err)
	}
	defer pf.Close()
	plan, diags := inject.Load(inject.Input{
		ManifestFile: *manifest, Manifest: mf, PolicyFile: *policy, Policy: pf,
		Version: *version, Env: *envName,
	})
	if *output == "json" {
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
	if len(diags) > 0 {
		if *output == "text" {
			fmt.Fprintf(e.stderr, "%d problem(s); nothing written\n", len(diags))
		}
		return errInvalid
	}
	if format == "validate" {
		if *output == "text" {
			fmt.Fprintf(e.stderr, "%s and %s are valid: %s\n", *manifest, *policy, plan.Name)
		}
		return nil
	}
	b, err := formats[format](plan)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = e.stdout.Write(b)
		return err
	}
	// Written whole or not at all: a pipeline never finds half a file.
	tmp, err := os.CreateTemp(filepath.Dir(*out), ".trellis-inject-*")
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
	return os.Rename(tmp.Name(), *out)
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
