// Package yamlfields finds what a YAML document says that a Go type does
// not know, and where: unknown keys with a "did you mean", the line of a
// field by its path, and anchors or aliases (refused, so that a small
// document cannot expand into a huge one). Resources (api/v1) and the
// manifests of trellis inject report their problems with it.
package yamlfields

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Unknown is a key that has no field in the type it decodes into.
type Unknown struct {
	Line, Column int
	Path         string // such as spec.rules[1].tagrets
	Suggestion   string // the closest known name, or ""
}

// Join appends a field name to a path.
func Join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// Check reports every key under node that t (a struct, or a pointer to
// one) has no yaml-tagged field for, through nested structs, slices and
// maps of structs.
func Check(node *yaml.Node, t reflect.Type, path string) []Unknown {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct && node.Kind == yaml.MappingNode:
	case (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && node.Kind == yaml.SequenceNode:
		var out []Unknown
		for i, item := range node.Content {
			out = append(out, Check(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	case t.Kind() == reflect.Map && node.Kind == yaml.MappingNode:
		var out []Unknown
		for i := 0; i+1 < len(node.Content); i += 2 {
			out = append(out, Check(node.Content[i+1], t.Elem(), Join(path, node.Content[i].Value))...)
		}
		return out
	default:
		return nil // a type mismatch is the decoder's to report
	}
	known := map[string]reflect.Type{}
	var names []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		known[name] = f.Type
		names = append(names, name)
	}
	var out []Unknown
	for i := 0; i+1 < len(node.Content); i += 2 {
		k, v := node.Content[i], node.Content[i+1]
		ft, ok := known[k.Value]
		if !ok {
			out = append(out, Unknown{Line: k.Line, Column: k.Column, Path: Join(path, k.Value), Suggestion: Suggest(k.Value, names)})
			continue
		}
		out = append(out, Check(v, ft, Join(path, k.Value))...)
	}
	return out
}

// Suggest returns the known name closest to name (case aside), if one is
// within two edits, else "".
func Suggest(name string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(name), strings.ToLower(k)); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// Lookup finds the value node at a path such as "spec.protocol" or
// "spec.rules[1].targets[0].weight"; nil if it is not there.
func Lookup(n *yaml.Node, path string) *yaml.Node {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	for _, part := range strings.Split(path, ".") {
		name, index, _ := strings.Cut(part, "[")
		if n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == name {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return nil
		}
		n = next
		for index != "" {
			var idx string
			idx, index, _ = strings.Cut(index, "]")
			index = strings.TrimPrefix(index, "[")
			i, err := strconv.Atoi(idx)
			if err != nil || n.Kind != yaml.SequenceNode || i < 0 || i >= len(n.Content) {
				return n
			}
			n = n.Content[i]
		}
	}
	return n
}

// Nearest is the node at path or, for a field that is missing, the
// nearest enclosing one that is there (the document itself at worst).
func Nearest(doc *yaml.Node, path string) *yaml.Node {
	for path != "" {
		if n := Lookup(doc, path); n != nil {
			return n
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		return doc.Content[0]
	}
	return doc
}

// HasAliases reports whether n uses anchors or aliases, or nests deeper
// than any real document needs.
func HasAliases(n *yaml.Node, depth int) bool {
	if n.Kind == yaml.AliasNode || n.Anchor != "" || depth > 32 {
		return true
	}
	for _, c := range n.Content {
		if HasAliases(c, depth+1) {
			return true
		}
	}
	return false
}

// TypeProblem is a value of the wrong kind for its field, as a person
// would say it: no Go type names.
type TypeProblem struct {
	Line int
	Path string // such as services[0].port; "" if not found
	Msg  string // such as `"ninety" is not a number`, or "want a list"
}

// DescribeTypeError turns one message of a yaml.TypeError ("line 4:
// cannot unmarshal !!str `ninety` into int") about the document under
// root into a TypeProblem; ok is false for any other message.
func DescribeTypeError(root *yaml.Node, msg string) (p TypeProblem, ok bool) {
	var rest string
	if n, _ := fmt.Sscanf(msg, "line %d:", &p.Line); n != 1 {
		return p, false
	}
	_, rest, _ = strings.Cut(msg, ": ")
	rest, found := strings.CutPrefix(rest, "cannot unmarshal ")
	if !found {
		return p, false
	}
	what, goType, found := strings.Cut(rest, " into ")
	if !found {
		return p, false
	}
	tag, value, scalar := strings.Cut(what, " `")
	value = strings.TrimSuffix(value, "`")
	p.Path = pathAt(root, "", tag, value, p.Line)
	var want string
	switch {
	case strings.HasPrefix(goType, "[]"):
		want = "a list"
	case strings.HasPrefix(goType, "map["), strings.Contains(goType, "."):
		want = "a mapping of fields"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"), strings.HasPrefix(goType, "float"):
		want = "a number"
	case goType == "bool":
		want = "true or false"
	default:
		want = "a string"
	}
	if scalar {
		p.Msg = fmt.Sprintf("%q is not %s", value, want)
	} else {
		p.Msg = "want " + want
	}
	return p, true
}

// pathAt finds the path of the node at line with the given tag (and, for
// a scalar, value), under n at path; "" if there is none.
func pathAt(n *yaml.Node, path, tag, value string, line int) string {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			if p := pathAt(c, path, tag, value, line); p != "" {
				return p
			}
		}
		return ""
	}
	match := func(c *yaml.Node) bool {
		return c.Line == line && c.ShortTag() == tag && (c.Kind != yaml.ScalarNode || c.Value == value)
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := Join(path, k.Value)
			if match(v) {
				return p
			}
			if q := pathAt(v, p, tag, value, line); q != "" {
				return q
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			if match(c) {
				return p
			}
			if q := pathAt(c, p, tag, value, line); q != "" {
				return q
			}
		}
	}
	return ""
}
