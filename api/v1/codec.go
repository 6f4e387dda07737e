package v1

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"

	"github.com/trellis-mesh/trellis/internal/yamlfields"

	"gopkg.in/yaml.v3"
)

// spec returns the spec that Kind selects, allocating it when alloc is set.
func (r *Resource) spec(alloc bool) (any, error) {
	switch r.Kind {
	case KindMesh:
		if r.Mesh == nil && alloc {
			r.Mesh = &MeshSpec{}
		}
		return r.Mesh, nil
	case KindService:
		if r.Service == nil && alloc {
			r.Service = &ServiceSpec{}
		}
		return r.Service, nil
	case KindIntention:
		if r.Intention == nil && alloc {
			r.Intention = &IntentionSpec{}
		}
		return r.Intention, nil
	case KindRoute:
		if r.Route == nil && alloc {
			r.Route = &RouteSpec{}
		}
		return r.Route, nil
	case KindGateway:
		if r.Gateway == nil && alloc {
			r.Gateway = &GatewaySpec{}
		}
		return r.Gateway, nil
	case "":
		return nil, &FieldError{Path: "kind", Msg: "missing"}
	}
	return nil, &FieldError{Path: "kind", Msg: fmt.Sprintf("unknown kind %q (want one of %v)", r.Kind, Kinds)}
}

type wireResource struct {
	Kind string          `json:"kind"`
	Name string          `json:"name"`
	Spec json.RawMessage `json:"spec,omitempty"`
}

// MarshalJSON writes {"kind", "name", "spec"}.
func (r Resource) MarshalJSON() ([]byte, error) {
	spec, err := r.spec(false)
	if err != nil {
		return nil, err
	}
	w := wireResource{Kind: r.Kind, Name: r.Name}
	if !reflect.ValueOf(spec).IsNil() {
		if w.Spec, err = json.Marshal(spec); err != nil {
			return nil, err
		}
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads {"kind", "name", "spec"}, rejecting unknown fields.
func (r *Resource) UnmarshalJSON(b []byte) error {
	var w wireResource
	if err := strictJSON(b, &w); err != nil {
		return err
	}
	*r = Resource{Kind: w.Kind, Name: w.Name}
	spec, err := r.spec(true)
	if err != nil {
		return err
	}
	if len(w.Spec) > 0 {
		if err := strictJSON(w.Spec, spec); err != nil {
			return fmt.Errorf("spec: %w", err)
		}
	}
	return nil
}

func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// MarshalYAML writes kind, name and spec.
func (r Resource) MarshalYAML() (any, error) {
	spec, err := r.spec(false)
	if err != nil {
		return nil, err
	}
	out := map[string]any{"kind": r.Kind, "name": r.Name}
	if !reflect.ValueOf(spec).IsNil() {
		out["spec"] = spec
	}
	return out, nil
}

// DecodeError is one problem in a YAML file, located by line and field.
type DecodeError struct {
	File  string
	Line  int
	Field string
	Msg   string
}

func (e *DecodeError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Field != "" {
		b.WriteString(": " + e.Field)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// MaxDocumentBytes bounds what DecodeYAML reads, so that a huge or
// alias-bombed file is refused rather than expanded.
const MaxDocumentBytes = 4 << 20

// DecodeYAML reads every YAML document in r (file names it in errors),
// rejects unknown fields, validates each resource and returns them only when
// all are valid; otherwise it returns every problem found, joined.
func DecodeYAML(file string, r io.Reader) ([]Resource, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxDocumentBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(data) > MaxDocumentBytes {
		return nil, &DecodeError{File: file, Msg: fmt.Sprintf("larger than %d bytes", MaxDocumentBytes)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var (
		out  []Resource
		errs []error
	)
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, yamlError(file, err))
			break
		}
		res, docErrs := decodeDocument(file, &doc)
		errs = append(errs, docErrs...)
		if len(docErrs) == 0 && res != nil {
			out = append(out, *res)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(out) == 0 {
		return nil, &DecodeError{File: file, Msg: "no resources"}
	}
	return out, nil
}

// yamlError turns a yaml.v3 error ("yaml: line 3: ...") into a DecodeError.
func yamlError(file string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		_, msg, _ = strings.Cut(msg, ": ")
	}
	return &DecodeError{File: file, Line: line, Msg: msg}
}

func decodeDocument(file string, doc *yaml.Node) (*Resource, []error) {
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	if doc.Kind == yaml.ScalarNode && doc.Tag == "!!null" {
		return nil, nil // an empty document between separators
	}
	if doc.Kind != yaml.MappingNode {
		return nil, []error{&DecodeError{File: file, Line: doc.Line, Msg: "a resource must be a mapping with kind, name and spec"}}
	}
	if yamlfields.HasAliases(doc, 0) {
		return nil, []error{&DecodeError{File: file, Line: doc.Line, Msg: "anchors and aliases are not supported"}}
	}
	var errs []error
	var r Resource
	var specNode *yaml.Node
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		switch k.Value {
		case "kind":
			r.Kind = v.Value
		case "name":
			r.Name = v.Value
		case "spec":
			specNode = v
		default:
			errs = append(errs, &DecodeError{File: file, Line: k.Line, Field: k.Value, Msg: "unknown field" + didYouMean(yamlfields.Suggest(k.Value, []string{"kind", "name", "spec"}))})
		}
	}
	// where is the line of path's node or, for a missing field, of the
	// nearest enclosing one that is there.
	where := func(path string) int { return yamlfields.Nearest(doc, path).Line }
	spec, err := r.spec(true)
	if err != nil {
		var fe *FieldError
		errors.As(err, &fe)
		return nil, append(errs, &DecodeError{File: file, Line: where(fe.Path), Field: fe.Path, Msg: fe.Msg})
	}
	if specNode != nil {
		if specNode.Kind != yaml.MappingNode {
			errs = append(errs, &DecodeError{File: file, Line: specNode.Line, Field: "spec", Msg: "must be a mapping"})
		} else {
			errs = append(errs, checkFields(file, specNode, reflect.TypeOf(spec).Elem(), "spec")...)
			if err := specNode.Decode(spec); err != nil {
				var te *yaml.TypeError
				if errors.As(err, &te) {
					for _, m := range te.Errors {
						errs = append(errs, yamlError(file, errors.New(m)))
					}
				} else {
					errs = append(errs, yamlError(file, err))
				}
			}
		}
	} else if r.Kind == KindIntention || r.Kind == KindRoute || r.Kind == KindGateway {
		r.Intention, r.Route, r.Gateway = nil, nil, nil // Validate reports the missing spec
	}
	if len(errs) > 0 {
		return nil, errs
	}
	if err := r.Validate(); err != nil {
		for _, e := range unjoin(err) {
			var fe *FieldError
			if errors.As(e, &fe) {
				errs = append(errs, &DecodeError{File: file, Line: where(fe.Path), Field: fe.Path, Msg: fe.Msg})
			} else {
				errs = append(errs, &DecodeError{File: file, Line: doc.Line, Msg: e.Error()})
			}
		}
		return nil, errs
	}
	return &r, nil
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// checkFields reports every key of node that t (a struct) has no yaml field for.
func checkFields(file string, node *yaml.Node, t reflect.Type, path string) []error {
	var errs []error
	for _, u := range yamlfields.Check(node, t, path) {
		errs = append(errs, &DecodeError{File: file, Line: u.Line, Field: u.Path, Msg: "unknown field" + didYouMean(u.Suggestion)})
	}
	return errs
}

func didYouMean(s string) string {
	if s == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", s)
}
