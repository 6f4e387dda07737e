package appmesh

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// NodeKind is the shape of a Node.
type NodeKind int

// Node shapes.
const (
	Scalar NodeKind = iota
	Map
	List
)

// Node is one value of an App Mesh spec after reading: a scalar, a map
// with its keys in order, or a list. Keys are camelCase whatever the
// source wrote (CloudFormation's PortMapping and HTTP2 are portMapping and
// http2, as in the API's JSON), so the mapping reads one shape; Path keeps
// the source's spelling, so the report names the field as the user wrote
// it. used marks what the mapping consumed; the rest is reported.
type Node struct {
	Kind  NodeKind
	Value string // a scalar's text
	Keys  []string
	Vals  []*Node
	Items []*Node
	File  string
	Line  int
	Path  string
	used  bool
}

// Get returns the value of key (camelCase) in a map, or nil.
func (n *Node) Get(key string) *Node {
	if n == nil || n.Kind != Map {
		return nil
	}
	for i, k := range n.Keys {
		if k == key {
			return n.Vals[i]
		}
	}
	return nil
}

// At walks a dotted path of keys ("portMapping.port").
func (n *Node) At(path string) *Node {
	for _, k := range strings.Split(path, ".") {
		n = n.Get(k)
	}
	return n
}

// Str returns the scalar at path and marks it used; "" when absent.
func (n *Node) Str(path string) string {
	v := n.At(path)
	if v == nil || v.Kind != Scalar {
		return ""
	}
	v.used = true
	return v.Value
}

// Int returns the integer at path and marks it used; ok is false when
// it is absent or not an integer.
func (n *Node) Int(path string) (int, bool) {
	v := n.At(path)
	if v == nil || v.Kind != Scalar {
		return 0, false
	}
	i, err := strconv.Atoi(strings.TrimSpace(v.Value))
	if err != nil {
		return 0, false
	}
	v.used = true
	return i, true
}

// List returns the items of the list at path (nil when absent).
func (n *Node) List(path string) []*Node {
	v := n.At(path)
	if v == nil || v.Kind != List {
		return nil
	}
	v.used = true
	return v.Items
}

// Use marks n and everything under it used.
func (n *Node) Use() {
	if n == nil {
		return
	}
	n.used = true
	for _, c := range n.Vals {
		c.Use()
	}
	for _, c := range n.Items {
		c.Use()
	}
}

// Pos is where a node is, for errors and the report.
func (n *Node) Pos() string { return fmt.Sprintf("%s:%d", n.File, n.Line) }

// unused calls f for the topmost nodes under n that nothing consumed: a
// map or list none of whose leaves were used is reported once, as a
// whole.
func (n *Node) unused(f func(*Node)) {
	if n == nil {
		return
	}
	if n.Kind != Scalar && len(n.Vals) == 0 && len(n.Items) == 0 {
		return // an empty map or list configures nothing
	}
	if !n.anyUsed() {
		f(n)
		return
	}
	for _, c := range n.Vals {
		c.unused(f)
	}
	for _, c := range n.Items {
		c.unused(f)
	}
}

func (n *Node) anyUsed() bool {
	if n.used {
		return true
	}
	for _, c := range n.Vals {
		if c.anyUsed() {
			return true
		}
	}
	for _, c := range n.Items {
		if c.anyUsed() {
			return true
		}
	}
	return false
}

// camel turns a CloudFormation key into the API's JSON spelling:
// PortMapping -> portMapping, HTTP2 -> http2, TLS -> tls, AWSCloudMap ->
// awsCloudMap, ACM -> acm.
func camel(k string) string {
	r := []rune(k)
	i := 0
	for i < len(r) && unicode.IsUpper(r[i]) {
		i++
	}
	switch {
	case i == 0:
		return k
	case i == len(r) || !unicode.IsLetter(r[i]): // all capitals, maybe then digits: HTTP2
		return strings.ToLower(k)
	case i > 1: // AWSCloudMap: the last capital starts the next word
		i--
	}
	return strings.ToLower(string(r[:i])) + string(r[i:])
}
