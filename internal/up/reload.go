package up

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/client"
)

// appliedFile, in the data dir, records each resource trellis up applied
// from the example's files: the hash of the file's version and of the
// store's right after, by kind/name. A resource whose file version is
// unchanged since is not applied again, so a change a person made with
// the CLI (a Route moved to v2, say) outlives a restart or a reload; one
// whose store version changed since is a person's change, kept and said.
const appliedFile = "applied.json"

type appliedRecord struct {
	File  string `json:"file"`
	Store string `json:"store"`
}

func hashJSON(v any) string {
	b, _ := json.Marshal(v)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func loadApplied(dataDir string) map[string]appliedRecord {
	m := map[string]appliedRecord{}
	if b, err := os.ReadFile(filepath.Join(dataDir, appliedFile)); err == nil {
		_ = json.Unmarshal(b, &m) // unreadable: everything is applied again
	}
	return m
}

func saveApplied(dataDir string, m map[string]appliedRecord) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dataDir, appliedFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dataDir, appliedFile))
}

// fileResources are the resources f declares: the Mesh, a Service per
// service name, its intentions, and the files of its resources list.
func fileResources(f *File) []v1.Resource {
	res := []v1.Resource{{Kind: v1.KindMesh, Name: v1.MeshName, Mesh: &f.Mesh}}
	seen := map[string]bool{}
	for _, s := range f.Services {
		if !seen[s.Name] {
			seen[s.Name] = true
			spec := &v1.ServiceSpec{Protocol: s.Protocol, Port: s.callPort(), Hostnames: s.Hostnames}
			if s.Edge != nil && s.Edge.CertSource == v1.CertMesh {
				spec.DNSNames = s.Edge.DNSNames // what the mesh CA may sign for it
			}
			res = append(res, v1.Resource{Kind: v1.KindService, Name: s.Name, Service: spec})
		}
	}
	for _, in := range f.Intentions {
		name := strings.ReplaceAll(in.Source, "*", "any") + "." + in.Destination
		res = append(res, v1.Resource{Kind: v1.KindIntention, Name: name, Intention: &in})
	}
	return append(res, f.resources...)
}

// applyFile applies what f declares and changed since it was last
// applied, deletes what an earlier version of the files declared and this
// one does not, and leaves what a person changed since with the CLI,
// saying so.
func applyFile(ctx context.Context, env *upEnv, f *File) error {
	api, out, dataDir := env.api, env.cfg.Out, env.cfg.DataDir
	prev := loadApplied(dataDir)
	next := map[string]appliedRecord{}
	var apply []v1.Resource
	declared := map[string]bool{}
	for _, r := range fileResources(f) {
		key := r.Kind + "/" + r.Name
		declared[key] = true
		fh := hashJSON(r)
		p, ok := prev[key]
		if !ok || p.File != fh {
			apply = append(apply, r)
			continue
		}
		// Unchanged in the file since it was applied: the store's
		// version stands, whoever made it.
		next[key] = p
		cur, err := api.Get(ctx, r.Kind, r.Name)
		switch {
		case client.IsNotFound(err):
			fmt.Fprintf(out, "Note: %s was deleted with the CLI; trellis.yaml's version is unchanged, so it stays deleted (edit the file, or run with --fresh, to bring it back).\n", key)
		case err != nil:
			return err
		case hashJSON(cur) != p.Store:
			fmt.Fprintf(out, "Note: kept your change to %s (trellis.yaml's version is unchanged since it was applied; edit the file, or run with --fresh, to reset it).\n", key)
		}
	}
	// Declared before, not now: the file no longer wants them.
	var gone []string
	for key := range prev {
		if !declared[key] {
			gone = append(gone, key)
		}
	}
	sort.Strings(gone)
	for _, key := range gone {
		kind, name, _ := strings.Cut(key, "/")
		if err := api.Delete(ctx, kind, name); err != nil && !client.IsNotFound(err) {
			return fmt.Errorf("delete %s (no longer in the files): %w", key, err)
		}
		fmt.Fprintf(out, "Deleted %s: no longer in the example's files.\n", key)
	}
	if len(apply) > 0 {
		if _, err := api.Apply(ctx, apply); err != nil {
			return err
		}
	}
	for _, r := range apply {
		cur, err := getApplied(ctx, api, r.Kind, r.Name)
		if err != nil {
			return err
		}
		next[r.Kind+"/"+r.Name] = appliedRecord{File: hashJSON(r), Store: hashJSON(cur)}
	}
	if err := saveApplied(dataDir, next); err != nil {
		return err
	}
	return warnRoutes(ctx, api, f, out)
}

// getApplied reads a resource just applied. The server answers reads
// from its view of the store, which follows a write by a few
// milliseconds: a 404 right after the apply means "not seen yet".
func getApplied(ctx context.Context, api *client.Client, kind, name string) (v1.Resource, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	wait := 5 * time.Millisecond
	for {
		r, err := api.Get(ctx, kind, name)
		if !client.IsNotFound(err) {
			return r, err
		}
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("%s/%s was applied but the server does not show it: %w", kind, name, err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// warnRoutes says when a Route sends weight to a version no service of f
// runs: its share of the requests fails.
func warnRoutes(ctx context.Context, api *client.Client, f *File, out interface{ Write([]byte) (int, error) }) error {
	routes, err := api.List(ctx, v1.KindRoute)
	if err != nil {
		return err
	}
	for _, r := range routes {
		for _, rule := range r.Route.Rules {
			for _, t := range rule.Targets {
				if t.Weight == 0 || t.Version == "" {
					continue
				}
				// A Route is named after its service.
				runs := slices.ContainsFunc(f.Services, func(s Service) bool {
					return s.Name == r.Name && s.Version == t.Version
				})
				if !runs {
					fmt.Fprintf(out, "Warning: route %s sends weight %d to version %s, which trellis.yaml does not run: those requests fail. Change the route (trellis apply), or run that version.\n",
						r.Name, t.Weight, t.Version)
				}
			}
		}
	}
	return nil
}

// fileState is what a reload compares: trellis.yaml's bytes and those of
// every file it lists.
func fileState(dir string) []byte {
	var b bytes.Buffer
	read := func(name string) {
		data, _ := os.ReadFile(filepath.Join(dir, name))
		sum := sha256.Sum256(data)
		b.WriteString(name)
		b.Write(sum[:])
	}
	read(FileName)
	if f, err := Load(dir); err == nil {
		for _, name := range f.Resources {
			read(name)
		}
	}
	return b.Bytes()
}

// reloadEvery is how often up looks at trellis.yaml and its files.
const reloadEvery = time.Second

// watch runs the example until ctx ends or the control plane stops, and
// restarts its workloads from the files whenever they change: services
// added, removed or changed start, stop or restart with their sidecars,
// and the resources are applied as at start (applyFile). A file that
// does not load leaves everything as it runs, and says why.
func watch(ctx context.Context, env *upEnv, cur **workloads, srvErr <-chan error) error {
	state := fileState(env.dir)
	t := time.NewTicker(reloadEvery)
	defer t.Stop()
	for {
		var wlErr chan error
		if *cur != nil {
			wlErr = (*cur).errs
		}
		select {
		case <-ctx.Done():
			fmt.Fprintln(env.cfg.Out, "\nStopping...")
			return nil
		case err := <-srvErr:
			return fmt.Errorf("control plane stopped: %w", err)
		case err := <-wlErr:
			return err
		case <-t.C:
		}
		now := fileState(env.dir)
		if bytes.Equal(now, state) {
			continue
		}
		state = now
		f, err := Load(env.dir)
		if err != nil {
			fmt.Fprintf(env.cfg.Out, "\n%s changed but does not load; still running the previous version:\n  %s\n", FileName, strings.ReplaceAll(err.Error(), "\n", "\n  "))
			continue
		}
		fmt.Fprintf(env.cfg.Out, "\n%s changed: restarting the services...\n", FileName)
		(*cur).stop()
		*cur = nil
		if err := checkPorts(f, ""); err != nil {
			fmt.Fprintf(env.cfg.Out, "Cannot start the new version: %v\n", err)
			continue
		}
		if err := applyFile(ctx, env, f); err != nil {
			fmt.Fprintf(env.cfg.Out, "Cannot apply the new version: %v\n", err)
			continue
		}
		w, err := startWorkloads(ctx, env, f)
		*cur = w
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(env.cfg.Out, "The new version did not start: %v\n", err)
			continue
		}
		printSummary(env.cfg.Out, env.srvAddr, f, w.adminAddrs())
	}
}
