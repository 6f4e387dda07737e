package inject

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/trellis-mesh/trellis/internal/yamlfields"
)

// maxInput bounds an input file: manifests and policies are small, and a
// bound keeps a hostile one from costing memory.
const maxInput = 1 << 20

// source is a parsed input file, kept to say where a field is.
type source struct {
	file string
	root *yaml.Node
}

// at is the position of the field at path, or of its nearest enclosing
// field when it is missing.
func (s *source) at(path string) (int, int) {
	if s == nil || s.root == nil {
		return 1, 1
	}
	n := yamlfields.Nearest(s.root, path)
	return n.Line, n.Column
}

// diag makes a Diagnostic for the field at path.
func (s *source) diag(path, hint, format string, args ...any) Diagnostic {
	line, col := s.at(path)
	return Diagnostic{File: s.file, Line: line, Column: col, Field: path, Message: fmt.Sprintf(format, args...), Hint: hint}
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// decode parses one YAML document from r into v (a pointer to a struct),
// strictly: unknown keys, wrong types, anchors and aliases, several
// documents are all diagnostics. The source is nil when v could not be
// filled; with only unknown keys it is there, for further checks.
func decode(file string, r io.Reader, v any) (*source, Diagnostics) {
	data, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return nil, Diagnostics{{File: file, Line: 1, Column: 1, Message: err.Error()}}
	}
	if len(data) > maxInput {
		return nil, Diagnostics{{File: file, Line: 1, Column: 1, Message: fmt.Sprintf("larger than %d bytes", maxInput)}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, Diagnostics{{File: file, Line: 1, Column: 1, Message: "empty document"}}
		}
		return nil, Diagnostics{yamlDiag(file, err.Error())}
	}
	src := &source{file: file, root: &doc}
	// Anchors and aliases are refused before anything walks the tree: a
	// few lines of them can stand for billions of nodes.
	if yamlfields.HasAliases(&doc, 0) {
		return nil, Diagnostics{{File: file, Line: 1, Column: 1, Message: "anchors and aliases are not supported (nor nesting deeper than 32)"}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, Diagnostics{{File: file, Line: extra.Line, Column: extra.Column, Message: "more than one document: give one per file"}}
	}
	body := &doc
	if body.Kind == yaml.DocumentNode && len(body.Content) == 1 {
		body = body.Content[0]
	}
	if body.Kind != yaml.MappingNode {
		return nil, Diagnostics{{File: file, Line: body.Line, Column: body.Column, Message: "must be a mapping of fields"}}
	}
	var ds Diagnostics
	for _, u := range yamlfields.Check(body, reflect.TypeOf(v), "") {
		d := Diagnostic{File: file, Line: u.Line, Column: u.Column, Field: u.Path, Message: "unknown field"}
		if u.Suggestion != "" {
			d.Hint = fmt.Sprintf("did you mean %q?", u.Suggestion)
		}
		ds = append(ds, d)
	}
	if err := body.Decode(v); err != nil {
		// The values are unreliable: report what is wrong, check no more.
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, e := range te.Errors {
				d := yamlDiag(file, e)
				d.Field, d.Column = fieldAtLine(body, "", d.Line)
				ds = append(ds, d)
			}
		} else {
			ds = append(ds, yamlDiag(file, err.Error()))
		}
		return nil, ds
	}
	// Unknown keys are reported, and the rest is still checked.
	return src, ds
}

// yamlDiag turns a yaml.v3 message ("line 4: cannot unmarshal ...") into
// a Diagnostic.
func yamlDiag(file, msg string) Diagnostic {
	d := Diagnostic{File: file, Line: 1, Column: 1, Message: msg}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		d.Line, _ = strconv.Atoi(m[1])
		d.Message = m[2]
	}
	return d
}

// fieldAtLine finds the field whose value starts on line (where yaml.v3
// reports a type error) and returns its path and the value's column.
func fieldAtLine(n *yaml.Node, path string, line int) (string, int) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := yamlfields.Join(path, k.Value)
			if v.Line == line && (v.Kind == yaml.ScalarNode || v.Kind == yaml.SequenceNode || k.Line == line) {
				return p, v.Column
			}
			if f, col := fieldAtLine(v, p, line); f != "" {
				return f, col
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			if c.Line == line && c.Kind == yaml.ScalarNode {
				return p, c.Column
			}
			if f, col := fieldAtLine(c, p, line); f != "" {
				return f, col
			}
		}
	}
	return "", 1
}
