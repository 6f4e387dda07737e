package appmesh

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// cfnNameProps are the properties holding each App Mesh type's name and
// its parent's.
var cfnNameProps = map[string][2]string{
	TypeMesh: {"MeshName", ""}, TypeVirtualNode: {"VirtualNodeName", ""},
	TypeVirtualService: {"VirtualServiceName", ""}, TypeVirtualRouter: {"VirtualRouterName", ""},
	TypeRoute: {"RouteName", "VirtualRouterName"}, TypeVirtualGateway: {"VirtualGatewayName", ""},
	TypeGatewayRoute: {"GatewayRouteName", "VirtualGatewayName"},
}

// arnKinds spell each type in an App Mesh ARN.
var arnKinds = map[string]string{
	TypeVirtualNode: "virtualNode", TypeVirtualService: "virtualService", TypeVirtualRouter: "virtualRouter",
	TypeVirtualGateway: "virtualGateway",
}

// cfn resolves one template's intrinsic functions.
type cfn struct {
	r         *reader
	params    *yaml.Node // Parameters
	resources *yaml.Node // Resources
	// busy guards against a template whose values refer to themselves.
	busy map[string]bool
}

// errNoValue is what !Ref AWS::NoValue resolves to: the key is dropped.
var noValue = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!novalue"}

// intrinsicErr is an intrinsic function that cannot be resolved.
type intrinsicErr struct {
	line int
	msg  string
}

func (e *intrinsicErr) Error() string { return e.msg }

func (r *reader) cloudFormation(top *yaml.Node) {
	c := &cfn{r: r, params: mapGet(top, "Parameters"), resources: mapGet(top, "Resources"), busy: map[string]bool{}}
	if c.resources == nil || c.resources.Kind != yaml.MappingNode {
		r.errorf(top.Line, "Resources", "a template without Resources")
		return
	}
	for i := 0; i+1 < len(c.resources.Content); i += 2 {
		logical, res := c.resources.Content[i].Value, c.resources.Content[i+1]
		path := "Resources." + logical
		typ := scalarAt(res, "Type")
		var kind string
		switch {
		case typ == "AWS::ECS::TaskDefinition":
			kind = TypeTaskDefinition
		case strings.HasPrefix(typ, "AWS::AppMesh::"):
			kind = strings.TrimPrefix(typ, "AWS::AppMesh::")
			if _, ok := cfnNameProps[kind]; !ok {
				line := res.Line
				if t := mapGet(res, "Type"); t != nil {
					line = t.Line
				}
				r.errorf(line, path+".Type", "unknown App Mesh resource type %q (want AWS::AppMesh::Mesh, VirtualNode, VirtualService, VirtualRouter, Route, VirtualGateway or GatewayRoute)", typ)
				continue
			}
		default:
			continue // IAM roles, VPCs, ECS services: the platform's
		}
		props := mapGet(res, "Properties")
		if props == nil {
			r.errorf(res.Line, path, "%s without Properties", typ)
			continue
		}
		resolved, err := c.resolve(props, path+".Properties")
		if err != nil {
			r.errs = append(r.errs, err)
			continue
		}
		o := Object{Form: FormCloudFormation, Type: kind, File: r.file, Line: res.Line, Where: path}
		if kind == TypeTaskDefinition {
			o.Name = logical
			o.Spec = r.toNode(resolved, path+".Properties", true)
			r.out = append(r.out, o)
			continue
		}
		keys := cfnNameProps[kind]
		o.Name = scalarAt(resolved, keys[0])
		o.Mesh = scalarAt(resolved, "MeshName")
		if keys[1] != "" {
			o.Parent = scalarAt(resolved, keys[1])
			if o.Parent == "" {
				r.errorf(props.Line, path+".Properties."+keys[1], "missing")
				continue
			}
		}
		if o.Name == "" {
			// CloudFormation names a resource without a name after the
			// stack; the logical ID is the best stand-in.
			o.Name = logical
		}
		spec := mapGet(resolved, "Spec")
		if spec == nil {
			spec = &yaml.Node{Kind: yaml.MappingNode, Line: props.Line}
		}
		o.Spec = r.toNode(spec, path+".Properties.Spec", true)
		rest := &yaml.Node{Kind: yaml.MappingNode, Line: props.Line}
		for j := 0; j+1 < len(resolved.Content); j += 2 {
			switch k := resolved.Content[j].Value; k {
			case keys[0], keys[1], "MeshName", "Spec":
			default:
				rest.Content = append(rest.Content, resolved.Content[j], resolved.Content[j+1])
			}
		}
		o.Rest = r.toNode(rest, path+".Properties", true)
		r.out = append(r.out, o)
	}
}

// resolve returns n with every intrinsic function replaced by its value,
// or an error naming the first one that cannot be resolved and what to
// supply.
func (c *cfn) resolve(n *yaml.Node, path string) (*yaml.Node, error) {
	if fn, arg, ok := intrinsic(n); ok {
		v, err := c.call(fn, arg, path)
		if err != nil {
			if ie, ok := err.(*intrinsicErr); ok {
				line := ie.line
				if line == 0 {
					line = n.Line
				}
				return nil, &Error{File: c.r.file, Line: line, Field: path, Msg: ie.msg}
			}
			return nil, err
		}
		return v, nil
	}
	switch n.Kind {
	case yaml.MappingNode:
		out := &yaml.Node{Kind: yaml.MappingNode, Line: n.Line, Column: n.Column}
		for i := 0; i+1 < len(n.Content); i += 2 {
			v, err := c.resolve(n.Content[i+1], path+"."+n.Content[i].Value)
			if err != nil {
				return nil, err
			}
			if v != noValue {
				out.Content = append(out.Content, n.Content[i], v)
			}
		}
		return out, nil
	case yaml.SequenceNode:
		out := &yaml.Node{Kind: yaml.SequenceNode, Line: n.Line, Column: n.Column}
		for i, item := range n.Content {
			v, err := c.resolve(item, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			if v != noValue {
				out.Content = append(out.Content, v)
			}
		}
		return out, nil
	}
	return n, nil
}

// intrinsic recognizes !Fn short forms and {"Fn::X": ...} long forms,
// returning the function's name (Ref, GetAtt, Sub, ...) and argument.
func intrinsic(n *yaml.Node) (string, *yaml.Node, bool) {
	if strings.HasPrefix(n.Tag, "!") && !strings.HasPrefix(n.Tag, "!!") {
		arg := *n
		arg.Tag = ""
		if n.Kind == yaml.ScalarNode {
			arg.Tag = "!!str"
		}
		return strings.TrimPrefix(n.Tag, "!"), &arg, true
	}
	if n.Kind == yaml.MappingNode && len(n.Content) == 2 {
		k := n.Content[0].Value
		if k == "Ref" || k == "Condition" {
			return k, n.Content[1], true
		}
		if strings.HasPrefix(k, "Fn::") {
			return strings.TrimPrefix(k, "Fn::"), n.Content[1], true
		}
	}
	return "", nil, false
}

func str(v string, at *yaml.Node) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v, Line: at.Line, Column: at.Column}
}

func ierr(at *yaml.Node, format string, args ...any) error {
	return &intrinsicErr{line: at.Line, msg: fmt.Sprintf(format, args...)}
}

// scalarArg resolves an argument that must end up a string.
func (c *cfn) scalarArg(arg *yaml.Node, path, fn string) (string, error) {
	v, err := c.resolve(arg, path)
	if err != nil {
		return "", err
	}
	if v.Kind != yaml.ScalarNode || v == noValue {
		return "", ierr(arg, "!%s: want a string", fn)
	}
	return v.Value, nil
}

func (c *cfn) call(fn string, arg *yaml.Node, path string) (*yaml.Node, error) {
	switch fn {
	case "Ref":
		name, err := c.scalarArg(arg, path, fn)
		if err != nil {
			return nil, err
		}
		return c.ref(name, arg)
	case "GetAtt":
		var res, att string
		switch arg.Kind {
		case yaml.ScalarNode:
			var ok bool
			if res, att, ok = strings.Cut(arg.Value, "."); !ok {
				return nil, ierr(arg, "!GetAtt %q: want RESOURCE.ATTRIBUTE", arg.Value)
			}
		case yaml.SequenceNode:
			if len(arg.Content) != 2 {
				return nil, ierr(arg, "!GetAtt: want [RESOURCE, ATTRIBUTE]")
			}
			var err error
			if res, err = c.scalarArg(arg.Content[0], path, fn); err != nil {
				return nil, err
			}
			if att, err = c.scalarArg(arg.Content[1], path, fn); err != nil {
				return nil, err
			}
		default:
			return nil, ierr(arg, "!GetAtt: want RESOURCE.ATTRIBUTE")
		}
		v, err := c.getAtt(res, att, arg)
		if err != nil {
			return nil, err
		}
		return str(v, arg), nil
	case "Sub":
		tmpl, vars := arg, (*yaml.Node)(nil)
		if arg.Kind == yaml.SequenceNode {
			if len(arg.Content) != 2 || arg.Content[1].Kind != yaml.MappingNode {
				return nil, ierr(arg, "!Sub: want a string, or [STRING, {NAME: VALUE}]")
			}
			tmpl, vars = arg.Content[0], arg.Content[1]
		}
		if tmpl.Kind != yaml.ScalarNode {
			return nil, ierr(arg, "!Sub: want a string")
		}
		v, err := c.sub(tmpl, vars, path)
		if err != nil {
			return nil, err
		}
		return str(v, arg), nil
	case "Join":
		if arg.Kind != yaml.SequenceNode || len(arg.Content) != 2 {
			return nil, ierr(arg, "!Join: want [SEPARATOR, [VALUES]]")
		}
		sep, err := c.scalarArg(arg.Content[0], path, fn)
		if err != nil {
			return nil, err
		}
		list, err := c.resolve(arg.Content[1], path)
		if err != nil {
			return nil, err
		}
		if list.Kind != yaml.SequenceNode {
			return nil, ierr(arg, "!Join: want a list of values")
		}
		var parts []string
		for _, p := range list.Content {
			if p.Kind != yaml.ScalarNode {
				return nil, ierr(p, "!Join: want strings")
			}
			parts = append(parts, p.Value)
		}
		return str(strings.Join(parts, sep), arg), nil
	case "Select":
		if arg.Kind != yaml.SequenceNode || len(arg.Content) != 2 {
			return nil, ierr(arg, "!Select: want [INDEX, [VALUES]]")
		}
		is, err := c.scalarArg(arg.Content[0], path, fn)
		if err != nil {
			return nil, err
		}
		list, err := c.resolve(arg.Content[1], path)
		if err != nil {
			return nil, err
		}
		i, err := strconv.Atoi(is)
		if err != nil || list.Kind != yaml.SequenceNode || i < 0 || i >= len(list.Content) {
			return nil, ierr(arg, "!Select: index %q is not in the list", is)
		}
		return list.Content[i], nil
	case "Split":
		if arg.Kind != yaml.SequenceNode || len(arg.Content) != 2 {
			return nil, ierr(arg, "!Split: want [SEPARATOR, STRING]")
		}
		sep, err := c.scalarArg(arg.Content[0], path, fn)
		if err != nil {
			return nil, err
		}
		s, err := c.scalarArg(arg.Content[1], path, fn)
		if err != nil {
			return nil, err
		}
		if sep == "" {
			return nil, ierr(arg, "!Split: empty separator")
		}
		out := &yaml.Node{Kind: yaml.SequenceNode, Line: arg.Line}
		for _, p := range strings.Split(s, sep) {
			out.Content = append(out.Content, str(p, arg))
		}
		return out, nil
	case "ImportValue":
		name, err := c.scalarArg(arg, path, fn)
		if err != nil {
			return nil, err
		}
		if v, ok := c.r.opt.Params[name]; ok {
			return str(v, arg), nil
		}
		return nil, ierr(arg, "!ImportValue %s: the export is another stack's; supply it with --param %s=VALUE", name, name)
	}
	return nil, ierr(arg, "!%s is not supported here: resolve it in the template, or replace the value", fn)
}

// pseudo parameters with a value that does not depend on the stack.
var pseudoFixed = map[string]string{"AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}

func (c *cfn) ref(name string, at *yaml.Node) (*yaml.Node, error) {
	if v, ok := c.r.opt.Params[name]; ok {
		return str(v, at), nil
	}
	if name == "AWS::NoValue" {
		return noValue, nil
	}
	if v, ok := pseudoFixed[name]; ok {
		return str(v, at), nil
	}
	if strings.HasPrefix(name, "AWS::") {
		return nil, ierr(at, "!Ref %s: known only when the stack is deployed; supply it with --param %s=VALUE", name, name)
	}
	if p := mapGet(c.params, name); p != nil {
		def := mapGet(p, "Default")
		if def == nil {
			return nil, ierr(at, "!Ref %s: parameter %s (line %d) has no Default; supply it with --param %s=VALUE", name, name, p.Line, name)
		}
		if strings.Contains(scalarAt(p, "Type"), "List") && def.Kind == yaml.ScalarNode {
			out := &yaml.Node{Kind: yaml.SequenceNode, Line: at.Line}
			for _, s := range strings.Split(def.Value, ",") {
				out.Content = append(out.Content, str(strings.TrimSpace(s), at))
			}
			return out, nil
		}
		if def.Kind != yaml.ScalarNode {
			return def, nil
		}
		return str(def.Value, at), nil
	}
	res := mapGet(c.resources, name)
	if res == nil {
		return nil, ierr(at, "!Ref %s: no parameter or resource %s in the template; supply it with --param %s=VALUE", name, name, name)
	}
	typ := scalarAt(res, "Type")
	kind := strings.TrimPrefix(typ, "AWS::AppMesh::")
	if _, ok := cfnNameProps[kind]; ok && strings.HasPrefix(typ, "AWS::AppMesh::") {
		v, err := c.getAtt(name, "Arn", at)
		if err != nil {
			return nil, err
		}
		return str(v, at), nil
	}
	return nil, ierr(at, "!Ref %s: the %s's ID is known only when the stack is deployed; supply it with --param %s=VALUE", name, typ, name)
}

// getAtt resolves RESOURCE.ATTRIBUTE where the template says it: an App
// Mesh resource's names and ARN (with its account and region left
// empty: the ARN is only matched by its path), a Cloud Map service's
// name.
func (c *cfn) getAtt(resName, att string, at *yaml.Node) (string, error) {
	key := resName + "." + att
	if v, ok := c.r.opt.Params[key]; ok {
		return v, nil
	}
	res := mapGet(c.resources, resName)
	if res == nil {
		return "", ierr(at, "!GetAtt %s: no resource %s in the template; supply it with --param %s=VALUE", key, resName, key)
	}
	if c.busy[key] {
		return "", ierr(at, "!GetAtt %s refers to itself", key)
	}
	c.busy[key] = true
	defer delete(c.busy, key)
	typ := scalarAt(res, "Type")
	props := mapGet(res, "Properties")
	prop := func(p string) (string, error) {
		v := mapGet(props, p)
		if v == nil {
			return "", ierr(at, "!GetAtt %s: %s has no %s; supply it with --param %s=VALUE", key, resName, p, key)
		}
		rv, err := c.resolve(v, "Resources."+resName+".Properties."+p)
		if err != nil {
			return "", err
		}
		if rv.Kind != yaml.ScalarNode || rv == noValue {
			return "", ierr(at, "!GetAtt %s: not a string", key)
		}
		return rv.Value, nil
	}
	if kind, ok := strings.CutPrefix(typ, "AWS::AppMesh::"); ok {
		names, known := cfnNameProps[kind]
		switch {
		case !known:
		case att == names[0] || att == names[1] || att == "MeshName":
			return prop(att)
		case att == "Arn":
			mesh, err := prop("MeshName")
			if err != nil {
				return "", err
			}
			if kind == TypeMesh {
				return "arn:aws:appmesh:::mesh/" + mesh, nil
			}
			name, err := prop(names[0])
			if err != nil {
				return "", err
			}
			if ak, ok := arnKinds[kind]; ok {
				return "arn:aws:appmesh:::mesh/" + mesh + "/" + ak + "/" + name, nil
			}
		}
	}
	if typ == "AWS::ServiceDiscovery::Service" && att == "Name" {
		return prop("Name")
	}
	return "", ierr(at, "!GetAtt %s: the attribute is known only when the stack is deployed; supply it with --param %s=VALUE", key, key)
}

// sub expands ${NAME}, ${RESOURCE.ATTR} and ${!LITERAL} in a !Sub string.
func (c *cfn) sub(tmpl, vars *yaml.Node, path string) (string, error) {
	s := tmpl.Value
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:i])
		s = s[i+2:]
		j := strings.Index(s, "}")
		if j < 0 {
			return "", ierr(tmpl, "!Sub: unclosed ${ in %q", tmpl.Value)
		}
		name := s[:j]
		s = s[j+1:]
		if strings.HasPrefix(name, "!") {
			b.WriteString("${" + name[1:] + "}")
			continue
		}
		if v := mapGet(vars, name); v != nil {
			val, err := c.scalarArg(v, path, "Sub")
			if err != nil {
				return "", err
			}
			b.WriteString(val)
			continue
		}
		if res, att, ok := strings.Cut(name, "."); ok && !strings.HasPrefix(name, "AWS::") {
			v, err := c.getAtt(res, att, tmpl)
			if err != nil {
				return "", err
			}
			b.WriteString(v)
			continue
		}
		v, err := c.ref(name, tmpl)
		if err != nil {
			return "", err
		}
		if v.Kind != yaml.ScalarNode || v == noValue {
			return "", ierr(tmpl, "!Sub: ${%s} is not a string", name)
		}
		b.WriteString(v.Value)
	}
}
