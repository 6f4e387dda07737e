package v1

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/reference/resources.md from the code")

const (
	resourceReferenceFile = "docs/reference/resources.md"
	regenerate            = "go test ./internal/cli ./api/v1 -run Reference -update"
)

// resourceReference renders docs/reference/resources.md from the sources
// of this package in dir: for each of kinds (Kinds), the spec type that
// Resource's field of the same name holds, its doc comment, and a table of
// its YAML fields with their types and doc comments; each struct type a
// field refers to is expanded once, where it first appears, and linked to
// after. A spec field without a doc comment is an error: the reference
// would have a hole.
func resourceReference(dir string, kinds []string) ([]byte, error) {
	fset := token.NewFileSet()
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	var files []*ast.File
	for _, n := range names {
		if strings.HasSuffix(n, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, n, nil, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	pkg, err := doc.NewFromFiles(fset, files, "github.com/trellis-mesh/trellis/api/v1")
	if err != nil {
		return nil, err
	}
	r := &refWriter{pkg: pkg, types: map[string]*doc.Type{}, done: map[string]bool{}}
	for _, t := range pkg.Types {
		r.types[t.Name] = t
	}
	resource, err := r.structOf("Resource")
	if err != nil {
		return nil, err
	}

	b := &r.out
	b.WriteString("# Resource reference\n\n")
	fmt.Fprintf(b, "<!-- Generated from api/v1 by `%s`. Do not edit: change the doc comments in api/v1. -->\n\n", regenerate)
	b.WriteString("Resources are YAML documents applied with `trellis apply -f FILE` (several in one file, separated by `---`). ")
	b.WriteString("Each has a `kind`, a `name` and a `spec`, whose fields depend on the kind:\n\n")
	b.WriteString("```yaml\nkind: Service\nname: greeter\nspec:\n  protocol: http\n```\n\n")
	b.WriteString("An unknown field is an error that names its file, line and field. Kinds are applied in the order of this table.\n\n")
	b.WriteString("| kind | what it is |\n| --- | --- |\n")
	specs := map[string]string{}
	for _, kind := range kinds {
		spec := ""
		for _, f := range resource.Fields.List {
			if len(f.Names) == 1 && f.Names[0].Name == kind {
				if star, ok := f.Type.(*ast.StarExpr); ok {
					if id, ok := star.X.(*ast.Ident); ok {
						spec = id.Name
					}
				}
			}
		}
		if r.types[spec] == nil {
			return nil, fmt.Errorf("kind %s: Resource has no field %s of a pointer to a spec type", kind, kind)
		}
		specs[kind] = spec
		fmt.Fprintf(b, "| [%s](#%s) | %s |\n", kind, strings.ToLower(kind), cell(r.markdown(doc.Synopsis(r.types[spec].Doc))))
	}
	var errs []error
	for _, kind := range kinds {
		fmt.Fprintf(b, "\n## %s\n\n", kind)
		errs = append(errs, r.expand(specs[kind])...)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

type refWriter struct {
	pkg   *doc.Package
	types map[string]*doc.Type
	done  map[string]bool // types expanded
	out   bytes.Buffer
}

func (r *refWriter) structOf(name string) (*ast.StructType, error) {
	t := r.types[name]
	if t == nil {
		return nil, fmt.Errorf("no type %s", name)
	}
	for _, s := range t.Decl.Specs {
		if ts, ok := s.(*ast.TypeSpec); ok && ts.Name.Name == name {
			if st, ok := ts.Type.(*ast.StructType); ok {
				return st, nil
			}
		}
	}
	return nil, fmt.Errorf("type %s is not a struct", name)
}

// expand writes the type's doc and field table (under a heading the caller
// wrote), then the struct types its fields refer to that are not yet
// expanded, each under its own heading.
func (r *refWriter) expand(name string) []error {
	r.done[name] = true
	st, err := r.structOf(name)
	if err != nil {
		return []error{err}
	}
	b := &r.out
	b.WriteString(r.markdown(r.types[name].Doc))
	b.WriteString("\n| field | type | what it is |\n| --- | --- | --- |\n")
	var errs []error
	var nested []string
	for _, f := range st.Fields.List {
		if len(f.Names) != 1 {
			errs = append(errs, fmt.Errorf("%s: an embedded field, or several on one line: give each field its own line and doc comment", name))
			continue
		}
		field := f.Names[0].Name
		if !ast.IsExported(field) || f.Tag == nil {
			continue
		}
		tag := reflect.StructTag(strings.Trim(f.Tag.Value, "`"))
		key, _, _ := strings.Cut(tag.Get("yaml"), ",")
		if key == "-" {
			continue
		}
		if key == "" {
			errs = append(errs, fmt.Errorf("%s.%s: no yaml tag", name, field))
			continue
		}
		if f.Doc == nil || strings.TrimSpace(f.Doc.Text()) == "" {
			errs = append(errs, fmt.Errorf("%s.%s: no doc comment", name, field))
			continue
		}
		typ, refs := r.typeOf(f.Type)
		for _, ref := range refs {
			if !r.done[ref] && !slices.Contains(nested, ref) {
				nested = append(nested, ref)
			}
		}
		fmt.Fprintf(b, "| `%s` | %s | %s |\n", key, typ, cell(r.markdown(f.Doc.Text())))
	}
	for _, n := range nested {
		if r.done[n] {
			continue // expanded by an earlier sibling
		}
		fmt.Fprintf(b, "\n### %s\n\n", n)
		errs = append(errs, r.expand(n)...)
	}
	return errs
}

// typeOf names a field's type for YAML readers, linking struct types,
// and returns the struct types it refers to.
func (r *refWriter) typeOf(e ast.Expr) (string, []string) {
	switch e := e.(type) {
	case *ast.StarExpr:
		return r.typeOf(e.X)
	case *ast.ArrayType:
		s, refs := r.typeOf(e.Elt)
		return "list of " + s, refs
	case *ast.MapType:
		k, _ := r.typeOf(e.Key)
		v, refs := r.typeOf(e.Value)
		return "map of " + k + " to " + v, refs
	case *ast.Ident:
		if _, err := r.structOf(e.Name); err == nil {
			return fmt.Sprintf("[%s](#%s)", e.Name, strings.ToLower(e.Name)), []string{e.Name}
		}
		switch e.Name {
		case "int", "int64", "uint64":
			return "integer", nil
		case "float64":
			return "number", nil
		case "bool":
			return "boolean", nil
		}
		return e.Name, nil
	case *ast.SelectorExpr:
		return fmt.Sprintf("%s.%s", e.X, e.Sel.Name), nil
	}
	return fmt.Sprintf("%T", e), nil
}

// markdown renders a doc comment as Markdown, escaped.
func (r *refWriter) markdown(text string) string {
	return string(r.pkg.Printer().Markdown(r.pkg.Parser().Parse(text)))
}

// cell puts Markdown in one table cell: one line, the separator escaped.
func cell(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "\n\n", " ")
	return strings.ReplaceAll(s, "\n", " ")
}

func TestResourceReference(t *testing.T) {
	got, err := resourceReference(".", Kinds)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("..", "..", filepath.FromSlash(resourceReferenceFile))
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v; make it with: %s", err, regenerate)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		i := 0
		for i < len(gl) && i < len(wl) && gl[i] == wl[i] {
			i++
		}
		g, w := "(end of file)", "(end of file)"
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		t.Fatalf("%s is out of date with api/v1, first at line %d:\n  committed: %s\n  generated: %s\nregenerate with: %s", resourceReferenceFile, i+1, w, g, regenerate)
	}
}

// TestResourceReferenceCoversEverything checks the walk: every kind, every
// YAML field of the spec types (found by reflection, independently of the
// parser), and a nested type expanded once only.
func TestResourceReferenceCoversEverything(t *testing.T) {
	got, err := resourceReference(".", Kinds)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(got)
	for _, kind := range Kinds {
		if !strings.Contains(doc, "\n## "+kind+"\n") {
			t.Errorf("no section for kind %s", kind)
		}
	}
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type)
	walk = func(rt reflect.Type) {
		for rt.Kind() == reflect.Pointer || rt.Kind() == reflect.Slice {
			rt = rt.Elem()
		}
		if rt.Kind() != reflect.Struct || rt.PkgPath() != reflect.TypeFor[Resource]().PkgPath() || seen[rt] {
			return
		}
		seen[rt] = true
		if rt != reflect.TypeFor[Resource]() {
			if n := strings.Count(doc, "\n### "+rt.Name()+"\n"); n > 1 {
				t.Errorf("%s expanded %d times", rt.Name(), n)
			}
		}
		for i := range rt.NumField() {
			f := rt.Field(i)
			key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if key == "-" {
				walk(f.Type) // Resource's specs
				continue
			}
			if rt != reflect.TypeFor[Resource]() && !strings.Contains(doc, "| `"+key+"` |") {
				t.Errorf("%s.%s (yaml %q) is not in the reference", rt.Name(), f.Name, key)
			}
			walk(f.Type)
		}
	}
	walk(reflect.TypeFor[Resource]())
	for _, nested := range []string{"MeshDNS", "RouteMatch", "HeaderMatch", "CanaryPolicy", "GatewayTLS", "PassthroughTarget"} {
		if !strings.Contains(doc, "\n### "+nested+"\n") {
			t.Errorf("nested type %s is not expanded", nested)
		}
	}
}

// TestResourceReferenceWantsComments: a spec field without a doc comment
// fails the generator, naming the field.
func TestResourceReferenceWantsComments(t *testing.T) {
	dir := t.TempDir()
	src := "package v1\n\ntype Resource struct {\n\tThing *ThingSpec `yaml:\"-\"`\n}\n\n// ThingSpec is a thing.\ntype ThingSpec struct {\n\tSize int `yaml:\"size\"`\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "types.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := resourceReference(dir, []string{"Thing"})
	if err == nil || !strings.Contains(err.Error(), "ThingSpec.Size: no doc comment") {
		t.Errorf("got %v, want an error naming ThingSpec.Size", err)
	}
}
