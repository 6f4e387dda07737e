// Command notices writes THIRD_PARTY_NOTICES: the license files of every
// module linked into the trellis binaries (the full and the proxy-only
// Linux builds, from `go list -deps`, so test-only and tool modules are
// left out) and of Go's standard library and runtime, which every Go
// binary carries. Modules whose license files are the same bytes share one
// copy of the text. A module without a license file at its root fails the
// run, naming it: nothing ships without its license.
//
//	cd tools && go run ./notices            # rewrites ../THIRD_PARTY_NOTICES
//	cd tools && go run ./notices -o -       # to stdout
//
// The test in this directory fails while the committed file differs from
// what this writes (after a dependency changes, run it and commit).
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"

	"github.com/trellis-mesh/trellis/tools/internal/release"
)

// FileName is the notice's name at the repository root.
const FileName = "THIRD_PARTY_NOTICES"

func main() {
	out := flag.String("o", "", "where to write (default: THIRD_PARTY_NOTICES at the repository root; - for stdout)")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "notices:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	root, err := release.Root()
	if err != nil {
		return err
	}
	text, err := Generate(context.Background(), root)
	if err != nil {
		return err
	}
	switch out {
	case "-":
		_, err = os.Stdout.Write(text)
		return err
	case "":
		out = filepath.Join(root, FileName)
	}
	return os.WriteFile(out, text, 0o644)
}

// Module is one module linked into trellis.
type Module struct {
	Path, Version, Dir string
	// Licenses are its license and notice files, by name.
	Licenses []File
}

// File is one license or notice file.
type File struct {
	Name string
	Text []byte
}

// licenseName matches the files a module's license is in: LICENSE,
// LICENCE, COPYING and NOTICE, with any extension or suffix (LICENSE.md,
// LICENSE-APACHE, COPYING.txt).
var licenseName = regexp.MustCompile(`(?i)^(licen[cs]e|copying|notice)([.-].*)?$`)

// Generate returns the notice for the trellis module at root.
func Generate(ctx context.Context, root string) ([]byte, error) {
	mods := map[string]*Module{}
	for _, tags := range []string{"", release.ProxyOnlyTags} {
		if err := listDeps(ctx, root, tags, mods); err != nil {
			return nil, err
		}
	}
	var list []*Module
	var missing []string
	for _, m := range mods {
		entries, err := os.ReadDir(m.Dir)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", m.Path, err)
		}
		for _, e := range entries {
			if e.Type().IsRegular() && licenseName.MatchString(e.Name()) {
				b, err := os.ReadFile(filepath.Join(m.Dir, e.Name()))
				if err != nil {
					return nil, err
				}
				m.Licenses = append(m.Licenses, File{Name: e.Name(), Text: b})
			}
		}
		if len(m.Licenses) == 0 {
			missing = append(missing, m.Path+"@"+m.Version)
		}
		list = append(list, m)
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("no LICENSE, COPYING or NOTICE file at the root of %s: find its license before shipping it", strings.Join(missing, ", "))
	}
	goLicense, err := os.ReadFile(filepath.Join(goRoot(ctx), "LICENSE"))
	if err != nil {
		return nil, fmt.Errorf("Go's license: %w", err)
	}
	slices.SortFunc(list, func(a, b *Module) int { return strings.Compare(a.Path, b.Path) })
	list = append([]*Module{{Path: "Go (the standard library and runtime)", Licenses: []File{{Name: "LICENSE", Text: goLicense}}}}, list...)
	return render(list), nil
}

// listDeps adds the modules of the packages linked into a Linux build of
// ./cmd/trellis with tags.
func listDeps(ctx context.Context, root, tags string, mods map[string]*Module) error {
	args := []string{"list", "-deps", "-json=Module"}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	args = append(args, "./cmd/trellis")
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=linux", "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, stderr.Bytes())
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			Module *struct {
				Path, Version, Dir string
				Main               bool
				Replace            *struct{ Path, Version, Dir string }
			}
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("go list output: %w", err)
		}
		m := p.Module
		if m == nil || m.Main { // the standard library, and trellis itself
			continue
		}
		path, version, dir := m.Path, m.Version, m.Dir
		if r := m.Replace; r != nil {
			path, version, dir = r.Path, r.Version, r.Dir
		}
		if dir == "" {
			return fmt.Errorf("module %s@%s is not downloaded: run go mod download in %s", path, version, root)
		}
		mods[path] = &Module{Path: path, Version: version, Dir: dir}
	}
	return nil
}

// render writes the notice: a list of the modules, then each distinct
// license text once, headed by the modules it covers.
func render(mods []*Module) []byte {
	var b bytes.Buffer
	rule := strings.Repeat("=", 78)
	fmt.Fprintf(&b, "Third-party software in Trellis\n%s\n\n", rule)
	b.WriteString("The trellis binaries (the full build and the proxy-only build) link the\n" +
		"software below. Each is used under its license, whose text follows.\n" +
		"Generated from the module graph by `cd tools && go run ./notices`; do\n" +
		"not edit by hand.\n\n")
	for _, m := range mods {
		fmt.Fprintf(&b, "  %s\n", strings.TrimSpace(m.Path+" "+m.Version))
	}
	type text struct {
		body  []byte
		users []string
	}
	var texts []*text
	byHash := map[[32]byte]*text{}
	for _, m := range mods {
		for _, f := range m.Licenses {
			h := sha256.Sum256(f.Text)
			t := byHash[h]
			if t == nil {
				t = &text{body: f.Text}
				byHash[h] = t
				texts = append(texts, t)
			}
			t.users = append(t.users, strings.TrimSpace(m.Path+" "+m.Version)+" ("+f.Name+")")
		}
	}
	for _, t := range texts {
		fmt.Fprintf(&b, "\n%s\n", rule)
		for _, u := range t.users {
			fmt.Fprintf(&b, "%s\n", u)
		}
		fmt.Fprintf(&b, "%s\n\n", rule)
		b.Write(bytes.TrimRight(t.body, "\n"))
		b.WriteString("\n")
	}
	return b.Bytes()
}

// goTool is the go command that runs this program.
func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func goRoot(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, goTool(), "env", "GOROOT").Output()
	if err != nil {
		return runtime.GOROOT()
	}
	return strings.TrimSpace(string(out))
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
