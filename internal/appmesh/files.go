package appmesh

import (
	"bytes"
	"fmt"

	"gopkg.in/yaml.v3"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// File is one output file: a name relative to the output directory.
type File struct {
	Name string
	Data []byte
}

// kindFiles names the file of each kind's resources.
var kindFiles = map[string]string{
	v1.KindMesh: "mesh.yaml", v1.KindService: "services.yaml", v1.KindIntention: "intentions.yaml",
	v1.KindRoute: "routes.yaml", v1.KindGateway: "gateways.yaml",
}

// Files renders the result: one file of resources per kind (mesh.yaml,
// services.yaml, intentions.yaml, routes.yaml, gateways.yaml; only the
// kinds there are), each a YAML stream that trellis apply -f and trellis
// up's resources accept, and manifests/<service>-<version>.yaml for
// trellis inject.
func (r *Result) Files() ([]File, error) {
	var out []File
	for _, kind := range v1.Kinds {
		var buf bytes.Buffer
		for _, res := range r.Resources {
			if res.Kind != kind {
				continue
			}
			if buf.Len() > 0 {
				buf.WriteString("---\n")
			}
			if err := encode(&buf, res); err != nil {
				return nil, fmt.Errorf("%s %s: %w", res.Kind, res.Name, err)
			}
		}
		if buf.Len() > 0 {
			out = append(out, File{Name: kindFiles[kind], Data: append([]byte("# Made by trellis import appmesh.\n"), buf.Bytes()...)})
		}
	}
	for _, m := range r.Manifests {
		var buf bytes.Buffer
		fmt.Fprintf(&buf, "# Made by trellis import appmesh from virtual node %s: trellis inject ... -f manifests/%s\n", m.Node, m.Name)
		if err := encode(&buf, m.Manifest); err != nil {
			return nil, fmt.Errorf("manifest %s: %w", m.Name, err)
		}
		out = append(out, File{Name: "manifests/" + m.Name, Data: buf.Bytes()})
	}
	return out, nil
}

func encode(buf *bytes.Buffer, v any) error {
	enc := yaml.NewEncoder(buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return err
	}
	return enc.Close()
}
