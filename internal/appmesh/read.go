package appmesh

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Form is how a document wrote its App Mesh resources.
type Form string

// The forms Read understands.
const (
	FormCloudFormation Form = "cloudformation"
	FormDescribe       Form = "describe"
	FormKubernetes     Form = "kubernetes"
)

// App Mesh resource types, as Object.Type names them.
const (
	TypeMesh           = "Mesh"
	TypeVirtualNode    = "VirtualNode"
	TypeVirtualService = "VirtualService"
	TypeVirtualRouter  = "VirtualRouter"
	TypeRoute          = "Route"
	TypeVirtualGateway = "VirtualGateway"
	TypeGatewayRoute   = "GatewayRoute"
	// TypeTaskDefinition is an ECS task definition in a template: the
	// source of the inject manifests.
	TypeTaskDefinition = "TaskDefinition"
)

var meshTypes = []string{TypeMesh, TypeVirtualNode, TypeVirtualService, TypeVirtualRouter, TypeRoute, TypeVirtualGateway, TypeGatewayRoute}

// Object is one App Mesh resource, whatever form it came in.
type Object struct {
	Form Form
	Type string
	// Name is the resource's App Mesh name (a Kubernetes resource's
	// metadata.name; its spec.awsName is in Spec).
	Name string
	Mesh string
	// Parent is a Route's virtual router or a GatewayRoute's virtual
	// gateway.
	Parent string
	// Namespace of a Kubernetes resource.
	Namespace string
	// Spec is the resource's spec, camelCase keys.
	Spec *Node
	// Rest holds other fields that configure something (CloudFormation
	// Tags, MeshOwner), reported unless consumed.
	Rest *Node
	// File and Line locate the resource; Where names it in messages.
	File  string
	Line  int
	Where string
}

// Options bound and parameterize Read. The zero value works.
type Options struct {
	// Params supply values a template does not define: parameters
	// without a default, pseudo parameters (AWS::Region), exports
	// (!ImportValue NAME) and attributes (RESOURCE.ATTR). They also
	// override a parameter's default.
	Params map[string]string
	// MaxBytes bounds one input (default 4 MiB); MaxNodes bounds the YAML
	// nodes of one input (default 200,000).
	MaxBytes int
	MaxNodes int
}

// Defaults of Options.
const (
	DefaultMaxBytes = 4 << 20
	DefaultMaxNodes = 200_000
	maxDepth        = 64
)

// Error is a problem with an input, located by file, line and field:
// the same as trellis apply's, so both read alike.
type Error = v1.DecodeError

// reader reads one input.
type reader struct {
	file string
	opt  Options
	out  []Object
	errs []error
}

func (r *reader) errorf(line int, path, format string, args ...any) {
	r.errs = append(r.errs, &Error{File: r.file, Line: line, Field: path, Msg: fmt.Sprintf(format, args...)})
}

// Read reads every document of one input (file names it in errors) and
// returns its App Mesh objects, or every problem found, joined; never
// both.
func Read(file string, in io.Reader, opt Options) ([]Object, error) {
	if opt.MaxBytes <= 0 {
		opt.MaxBytes = DefaultMaxBytes
	}
	if opt.MaxNodes <= 0 {
		opt.MaxNodes = DefaultMaxNodes
	}
	data, err := io.ReadAll(io.LimitReader(in, int64(opt.MaxBytes)+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(data) > opt.MaxBytes {
		return nil, &Error{File: file, Msg: fmt.Sprintf("larger than %d bytes", opt.MaxBytes)}
	}
	r := &reader{file: file, opt: opt}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	nodes, docs := 0, 0
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			r.errs = append(r.errs, yamlError(file, err))
			break
		}
		if bad := checkShape(&doc, 0, &nodes, opt.MaxNodes); bad != "" {
			r.errorf(doc.Line, "", "%s", bad)
			break
		}
		if len(doc.Content) == 0 {
			continue // an empty document between ---
		}
		docs++
		r.document(doc.Content[0])
	}
	if len(r.errs) == 0 && docs == 0 {
		r.errorf(0, "", "no documents")
	}
	if len(r.errs) > 0 {
		return nil, errors.Join(r.errs...)
	}
	return r.out, nil
}

var yamlLineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlError turns a yaml.v3 error ("yaml: line 3: ...") into an Error.
func yamlError(file string, err error) error {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		if strings.HasPrefix(m[2], "did not find expected") {
			// yaml.v3 names a parser error by its context's line,
			// counted from 0; scanner errors count from 1.
			line++
		}
		return &Error{File: file, Line: line, Msg: "malformed YAML/JSON: " + m[2]}
	}
	return &Error{File: file, Msg: "malformed YAML/JSON: " + strings.TrimPrefix(msg, "yaml: ")}
}

// checkShape refuses anchors and aliases (a small document could stand
// for a huge one), nesting deeper than any App Mesh document needs, and
// more than max nodes in all; it returns what is wrong, with the line.
func checkShape(n *yaml.Node, depth int, count *int, max int) string {
	*count++
	switch {
	case n.Kind == yaml.AliasNode || n.Anchor != "":
		return fmt.Sprintf("line %d: YAML anchors and aliases are refused (a small file could expand into a huge one)", n.Line)
	case depth > maxDepth:
		return fmt.Sprintf("line %d: nested deeper than %d levels", n.Line, maxDepth)
	case *count > max:
		return fmt.Sprintf("line %d: more than %d YAML nodes", n.Line, max)
	}
	for _, c := range n.Content {
		if bad := checkShape(c, depth+1, count, max); bad != "" {
			return bad
		}
	}
	return ""
}

// describeKeys are the top-level keys of `aws appmesh describe-*`
// output, and listKeys those of lists of such objects.
var describeKeys = map[string]string{
	"mesh": TypeMesh, "virtualNode": TypeVirtualNode, "virtualService": TypeVirtualService,
	"virtualRouter": TypeVirtualRouter, "route": TypeRoute, "virtualGateway": TypeVirtualGateway,
	"gatewayRoute": TypeGatewayRoute,
}

var listKeys = map[string]string{
	"meshes": TypeMesh, "virtualNodes": TypeVirtualNode, "virtualServices": TypeVirtualService,
	"virtualRouters": TypeVirtualRouter, "routes": TypeRoute, "virtualGateways": TypeVirtualGateway,
	"gatewayRoutes": TypeGatewayRoute,
}

// document detects the form of one document and reads it.
func (r *reader) document(top *yaml.Node) {
	switch top.Kind {
	case yaml.SequenceNode: // a JSON array of describe outputs
		for i, item := range top.Content {
			if item.Kind != yaml.MappingNode || !r.describe(item, fmt.Sprintf("[%d].", i)) {
				r.errorf(item.Line, "", "not an App Mesh describe-* object")
			}
		}
		return
	case yaml.MappingNode:
		switch {
		case mapGet(top, "Resources") != nil || mapGet(top, "AWSTemplateFormatVersion") != nil:
			r.cloudFormation(top)
			return
		case mapGet(top, "apiVersion") != nil:
			r.kubernetes(top)
			return
		case r.describe(top, ""):
			return
		}
	}
	r.errorf(top.Line, "", "not an App Mesh document: want a CloudFormation template, the JSON of aws appmesh describe-*, or appmesh.k8s.aws/v1beta2 resources")
}

// describe reads a describe-* object, or a list of them; false when top
// is neither.
func (r *reader) describe(top *yaml.Node, at string) bool {
	if len(top.Content) == 2 {
		key, val := top.Content[0].Value, top.Content[1]
		if typ, ok := describeKeys[key]; ok && val.Kind == yaml.MappingNode {
			r.describeObject(typ, at+key, val)
			return true
		}
		if typ, ok := listKeys[key]; ok && val.Kind == yaml.SequenceNode {
			for i, item := range val.Content {
				if item.Kind != yaml.MappingNode {
					r.errorf(item.Line, fmt.Sprintf("%s[%d]", key, i), "not an object")
					continue
				}
				r.describeObject(typ, fmt.Sprintf("%s[%d]", key, i), item)
			}
			return true
		}
	}
	return false
}

// describeNameKeys name the fields of a describe object that hold its
// name and its parent's.
var describeNameKeys = map[string][2]string{
	TypeMesh: {"meshName", ""}, TypeVirtualNode: {"virtualNodeName", ""},
	TypeVirtualService: {"virtualServiceName", ""}, TypeVirtualRouter: {"virtualRouterName", ""},
	TypeRoute: {"routeName", "virtualRouterName"}, TypeVirtualGateway: {"virtualGatewayName", ""},
	TypeGatewayRoute: {"gatewayRouteName", "virtualGatewayName"},
}

func (r *reader) describeObject(typ, path string, m *yaml.Node) {
	keys := describeNameKeys[typ]
	o := Object{Form: FormDescribe, Type: typ, File: r.file, Line: m.Line}
	o.Name = scalarAt(m, keys[0])
	o.Mesh = scalarAt(m, "meshName")
	if keys[1] != "" {
		o.Parent = scalarAt(m, keys[1])
	}
	if o.Name == "" {
		r.errorf(m.Line, path, "%s without %s", typ, keys[0])
		return
	}
	if keys[1] != "" && o.Parent == "" {
		r.errorf(m.Line, path, "%s %s without %s", typ, o.Name, keys[1])
		return
	}
	o.Where = fmt.Sprintf("%s %s", typ, o.Name)
	spec := mapGet(m, "spec")
	if spec == nil {
		r.errorf(m.Line, path, "%s %s has no spec: list-* output names resources only; give describe-* output", typ, o.Name)
		return
	}
	o.Spec = r.toNode(spec, path+".spec", false)
	// metadata (arn, uid, version, times) and status describe the
	// resource's life in AWS, not its configuration.
	rest := &yaml.Node{Kind: yaml.MappingNode, Line: m.Line}
	for i := 0; i+1 < len(m.Content); i += 2 {
		switch k := m.Content[i].Value; k {
		case keys[0], keys[1], "meshName", "spec", "metadata", "status":
		default:
			rest.Content = append(rest.Content, m.Content[i], m.Content[i+1])
		}
	}
	o.Rest = r.toNode(rest, path, false)
	r.out = append(r.out, o)
}

// kubernetes reads an appmesh.k8s.aws/v1beta2 resource, or a List.
func (r *reader) kubernetes(top *yaml.Node) {
	api, kind := scalarAt(top, "apiVersion"), scalarAt(top, "kind")
	if api == "v1" && kind == "List" {
		items := mapGet(top, "items")
		if items == nil || items.Kind != yaml.SequenceNode {
			r.errorf(top.Line, "items", "a List without items")
			return
		}
		for _, item := range items.Content {
			if item.Kind != yaml.MappingNode || mapGet(item, "apiVersion") == nil {
				r.errorf(item.Line, "items", "not a Kubernetes resource")
				continue
			}
			r.kubernetes(item)
		}
		return
	}
	group, version, _ := strings.Cut(api, "/")
	if group != "appmesh.k8s.aws" {
		// Deployments, Services and the like travel with App Mesh
		// resources; they are the platform's, not the mesh's.
		return
	}
	if version != "v1beta2" {
		r.errorf(mapGet(top, "apiVersion").Line, "apiVersion", "%s is not supported: want appmesh.k8s.aws/v1beta2", api)
		return
	}
	found := false
	for _, t := range meshTypes {
		if t == kind && t != TypeRoute {
			found = true
		}
	}
	if !found {
		line := top.Line
		if k := mapGet(top, "kind"); k != nil {
			line = k.Line
		}
		r.errorf(line, "kind", "unknown App Mesh resource type %q (want one of Mesh, VirtualNode, VirtualService, VirtualRouter, VirtualGateway, GatewayRoute)", kind)
		return
	}
	meta := mapGet(top, "metadata")
	o := Object{Form: FormKubernetes, Type: kind, File: r.file, Line: top.Line,
		Name: scalarAt(meta, "name"), Namespace: scalarAt(meta, "namespace")}
	if o.Name == "" {
		r.errorf(top.Line, "metadata.name", "%s without a name", kind)
		return
	}
	o.Where = fmt.Sprintf("%s %s", kind, o.Name)
	spec := mapGet(top, "spec")
	if spec == nil {
		spec = &yaml.Node{Kind: yaml.MappingNode, Line: top.Line}
	}
	o.Spec = r.toNode(spec, kind+"/"+o.Name+" spec", false)
	if kind == TypeVirtualRouter {
		// Routes are inline in a Kubernetes VirtualRouter: each becomes
		// a Route object, as in the other forms.
		if routes := o.Spec.Get("routes"); routes != nil && routes.Kind == List {
			routes.used = true
			for _, rt := range routes.Items {
				ro := Object{Form: FormKubernetes, Type: TypeRoute, File: r.file, Line: rt.Line,
					Name: rt.Str("name"), Parent: o.Name, Namespace: o.Namespace, Spec: rt}
				ro.Where = fmt.Sprintf("Route %s of VirtualRouter %s", ro.Name, o.Name)
				r.out = append(r.out, ro)
			}
		}
	}
	r.out = append(r.out, o)
}

// toNode copies a yaml.Node into a Node; camelKeys converts
// CloudFormation's PascalCase keys.
func (r *reader) toNode(y *yaml.Node, path string, camelKeys bool) *Node {
	n := &Node{File: r.file, Line: y.Line, Path: path}
	switch y.Kind {
	case yaml.MappingNode:
		n.Kind = Map
		for i := 0; i+1 < len(y.Content); i += 2 {
			k := y.Content[i].Value
			key := k
			if camelKeys {
				key = camel(k)
			}
			n.Keys = append(n.Keys, key)
			n.Vals = append(n.Vals, r.toNode(y.Content[i+1], joinPath(path, k), camelKeys))
		}
	case yaml.SequenceNode:
		n.Kind = List
		for i, c := range y.Content {
			n.Items = append(n.Items, r.toNode(c, fmt.Sprintf("%s[%d]", path, i), camelKeys))
		}
	default:
		n.Kind = Scalar
		n.Value = y.Value
	}
	return n
}

func joinPath(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// mapGet returns the value of key in a mapping node, or nil.
func mapGet(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func scalarAt(m *yaml.Node, key string) string {
	v := mapGet(m, key)
	if v == nil || v.Kind != yaml.ScalarNode {
		return ""
	}
	return v.Value
}
