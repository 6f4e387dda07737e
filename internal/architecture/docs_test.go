package architecture

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	pathpkg "path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The contributors' map, docs/architecture.md, names files and functions.
// Its names are checked against the code, so that a rename breaks this
// test rather than the map. In code spans:
//
//   - `internal/x/file.go` (or any path under a top-level directory of the
//     repository, such as `bench/http-bulk.sh`) must exist;
//   - `internal/x/file.go:Name` or `internal/x/file.go:Type.Name` must also
//     declare Name (a function, type, variable, constant, or a method or
//     field of Type) in that file;
//   - `pkg.Name` or `pkg.Type.Name`, where pkg is the name of a package of
//     the module, must be declared in that package (its tests included, for
//     the benchmarks a trick is guarded by);
//   - `Type.Name` alone (not a package's name, not a file name such as
//     doc.go) must be declared in the package of the last file named
//     before it: "`internal/x/a.go:T.Run` calls `T.stop`".
const architectureDoc = "docs/architecture.md"

var (
	codeSpan = regexp.MustCompile("`([^`\n]+)`")
	pathRef  = regexp.MustCompile(`^((?:api|bench|client|cmd|docs|examples|integration|internal)/[\w./-]+)(?::([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?))?$`)
	// nameRef is pkg.Name, pkg.Type.Name or Type.Name: the first word,
	// then the rest.
	nameRef  = regexp.MustCompile(`^([A-Za-z_]\w*)\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)$`)
	bareRef  = regexp.MustCompile(`^[A-Za-z_]\w*\.[A-Za-z_]\w*$`)
	fileName = regexp.MustCompile(`\.(go|md|sh|yaml|yml|json|cfg)$`)
)

// goIndex is what the module's Go files declare: by file (relative to the
// root), and by package name (every directory of that name).
type goIndex struct {
	byFile map[string]map[string]bool
	byPkg  map[string][]string // package name -> files
}

func indexModule(t *testing.T, root string) goIndex {
	t.Helper()
	idx := goIndex{byFile: map[string]map[string]bool{}, byPkg: map[string][]string{}}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		decls := map[string]bool{}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil {
					decls[d.Name.Name] = true
					continue
				}
				decls[recvName(d.Recv.List[0].Type)+"."+d.Name.Name] = true
			case *ast.GenDecl:
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.TypeSpec:
						decls[s.Name.Name] = true
						addMembers(decls, s)
					case *ast.ValueSpec:
						for _, n := range s.Names {
							decls[n.Name] = true
						}
					}
				}
			}
		}
		idx.byFile[rel] = decls
		name := strings.TrimSuffix(f.Name.Name, "_test")
		idx.byPkg[name] = append(idx.byPkg[name], rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

func recvName(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.StarExpr:
		return recvName(e.X)
	case *ast.IndexExpr:
		return recvName(e.X)
	case *ast.IndexListExpr:
		return recvName(e.X)
	case *ast.Ident:
		return e.Name
	}
	return ""
}

// addMembers records a struct's fields and an interface's methods as
// Type.Name.
func addMembers(decls map[string]bool, s *ast.TypeSpec) {
	var fields *ast.FieldList
	switch t := s.Type.(type) {
	case *ast.StructType:
		fields = t.Fields
	case *ast.InterfaceType:
		fields = t.Methods
	default:
		return
	}
	for _, f := range fields.List {
		for _, n := range f.Names {
			decls[s.Name.Name+"."+n.Name] = true
		}
		if len(f.Names) == 0 { // embedded: its name is its type's
			decls[s.Name.Name+"."+recvName(f.Type)] = true
		}
	}
}

// docRefs checks the references of a document: it returns how many it
// checked and what is wrong with them.
func docRefs(root string, idx goIndex, doc string) (checked int, problems []string) {
	curDir := "" // of the last Go file named
	for _, m := range codeSpan.FindAllStringSubmatch(doc, -1) {
		span := m[1]
		if p := pathRef.FindStringSubmatch(span); p != nil {
			checked++
			path, name := p[1], p[2]
			if strings.HasSuffix(path, ".go") {
				curDir = pathpkg.Dir(path)
			}
			if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(path))); err != nil {
				problems = append(problems, fmt.Sprintf("`%s`: no file %s", span, path))
				continue
			}
			if name != "" && !idx.byFile[path][name] {
				problems = append(problems, fmt.Sprintf("`%s`: %s does not declare %s", span, path, name))
			}
			continue
		}
		p := nameRef.FindStringSubmatch(span)
		if p == nil || fileName.MatchString(span) {
			continue // not a name: a command, a value, a file name
		}
		if files, ok := idx.byPkg[p[1]]; ok && p[1] != "main" && p[2] != "" {
			checked++
			found := false
			for _, f := range files {
				found = found || idx.byFile[f][p[2]]
			}
			if !found {
				problems = append(problems, fmt.Sprintf("`%s`: no package %s declares %s", span, p[1], p[2]))
			}
			continue
		}
		if !bareRef.MatchString(span) {
			continue // one word: a field, a value, a variable
		}
		// Type.Name, in the package of the last file named.
		checked++
		if curDir == "" {
			problems = append(problems, fmt.Sprintf("`%s`: no file named before it, to find its package", span))
			continue
		}
		found := false
		for f, decls := range idx.byFile {
			found = found || pathpkg.Dir(f) == curDir && decls[span]
		}
		if !found {
			problems = append(problems, fmt.Sprintf("`%s`: not declared in %s, the package of the last file named", span, curDir))
		}
	}
	return checked, problems
}

func TestArchitectureDocNames(t *testing.T) {
	root := filepath.Join("..", "..")
	b, err := os.ReadFile(filepath.Join(root, architectureDoc))
	if err != nil {
		t.Fatal(err)
	}
	idx := indexModule(t, root)
	// A floor, so that a change of notation that the patterns miss fails
	// here instead of checking nothing.
	n, problems := docRefs(root, idx, string(b))
	for _, p := range problems {
		t.Errorf("%s: %s", architectureDoc, p)
	}
	if n < 100 {
		t.Errorf("%s: only %d file and function names recognised, want at least 100: is the notation of docs_test.go still the one used?", architectureDoc, n)
	}
}

// TestArchitectureDocCheck shows that the check catches what it is for.
func TestArchitectureDocCheck(t *testing.T) {
	root := filepath.Join("..", "..")
	idx := indexModule(t, root)
	for _, tc := range []struct {
		doc  string
		fail bool
	}{
		{"`internal/control/state.go:state.run`", false},
		{"`control.Server.Run` `l4.Pool` `trellis.yaml` `doc.go`", false},
		{"`internal/control/nosuch.go`", true},
		{"`internal/control/state.go:state.nosuch`", true},
		{"`internal/control/server.go:state.run`", true}, // declared, but in another file
		{"`control.NoSuchFunc`", true},
		{"`internal/control/state.go` then `state.applyLocked`", false},
		{"`internal/control/state.go` then `Server.Run`", false}, // another file of the package
		{"`internal/control/state.go` then `state.nosuch`", true},
		{"`internal/proxy/l4/pool.go` then `state.run`", true}, // another package
		{"`internal/proxy/l4/pool.go` then `Pool.NoSuch`", true},
		{"`state.run` before any file", true},
	} {
		n, problems := docRefs(root, idx, tc.doc)
		if n == 0 || (len(problems) > 0) != tc.fail {
			t.Errorf("%s: checked %d, problems %q; want failure %v", tc.doc, n, problems, tc.fail)
		}
	}
}
