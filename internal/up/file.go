package up

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/yamlfields"
)

// FileName is the file `trellis up DIR` reads.
const FileName = "trellis.yaml"

// File is DIR/trellis.yaml.
type File struct {
	// Mesh is the mesh-wide configuration.
	Mesh v1.MeshSpec `yaml:"mesh"`
	// Services to run, each with its sidecar.
	Services []Service `yaml:"services"`
	// Client is a sidecar with no app, whose upstream listeners let a person
	// call services from this machine (as `consul connect proxy -upstream`).
	Client *Client `yaml:"client"`
	// Intentions to apply.
	Intentions []v1.IntentionSpec `yaml:"intentions"`
	// Resources are more resource files (Routes, say), relative to DIR,
	// applied after the rest.
	Resources []string `yaml:"resources"`

	// resources is what the files in Resources hold, read by Load.
	resources []v1.Resource
}

// Service is one service to run. A service may appear more than once with
// different versions (a canary beside the stable version).
type Service struct {
	Name    string   `yaml:"name"`
	Command []string `yaml:"command"`
	Port    int      `yaml:"port"`
	Version string   `yaml:"version"`
	// Replicas run with ports Port, Port+1, ...; default 1.
	Replicas  int               `yaml:"replicas"`
	Protocol  string            `yaml:"protocol"`
	Upstreams []UpstreamSpec    `yaml:"upstreams"`
	Health    HealthSpec        `yaml:"health"`
	Env       map[string]string `yaml:"env"`
	// Edge, if set, gives each replica's sidecar an edge listener for
	// clients outside the mesh, on Edge.Port, Edge.Port+1, ...
	Edge *EdgeSpec `yaml:"edge"`
	// Network is the network the instances are in (default "default"):
	// callers in another network reach them through that network's
	// gateway, when a Gateway declares one.
	Network string `yaml:"network"`
	// ServicePort is the port callers put in the service's URLs, which
	// their sidecars listen on when they call it by name (default Port).
	ServicePort int `yaml:"servicePort"`
	// Hostnames are more DNS names of the service, beside
	// <name>.<domain> for each of mesh.dns.domains.
	Hostnames []string `yaml:"hostnames"`
	// Try is a path the app answers with 200, which the startup
	// summary's curl lines use (default /): a hint that works.
	Try string `yaml:"try"`
}

// tryPath is the path the summary shows for s.
func (s *Service) tryPath() string {
	if s.Try != "" {
		return s.Try
	}
	return "/"
}

// callPort is the port callers of s use: ServicePort, or Port.
func (s *Service) callPort() int {
	if s.ServicePort != 0 {
		return s.ServicePort
	}
	return s.Port
}

// EdgeSpec is a sidecar's edge listener (see sidecar.Edge).
type EdgeSpec struct {
	Port int `yaml:"port"`
	// Mode is terminate (default) or passthrough.
	Mode string `yaml:"mode"`
	// CertSource is files, mesh or self-signed (the default without
	// certFile). A mesh certificate needs the names in the Service's
	// spec.dnsNames; trellis up allows them.
	CertSource string `yaml:"certSource"`
	// DNSNames name a mesh-issued or self-signed certificate.
	DNSNames []string `yaml:"dnsNames"`
	// CertFile and KeyFile, relative to the directory, serve a certificate
	// from files instead.
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
	// AcceptProxyProtocol and SendProxyProtocol, as sidecar.Edge.
	AcceptProxyProtocol bool `yaml:"acceptProxyProtocol"`
	SendProxyProtocol   bool `yaml:"sendProxyProtocol"`
}

// UpstreamSpec is a local listener for an upstream service. Without a
// Port the app calls the upstream by its DNS name (mesh.dns.domains must
// be set): the sidecar listens at the upstream's service port on a
// loopback address of its own, and its DNS answers the name with it.
type UpstreamSpec struct {
	Service string `yaml:"service"`
	Port    int    `yaml:"port"`
}

// HealthSpec says how to check an app: an HTTP path, or TCP when empty.
type HealthSpec struct {
	HTTP string `yaml:"http"`
}

// Client is the local client sidecar.
type Client struct {
	Service   string         `yaml:"service"`
	Upstreams []UpstreamSpec `yaml:"upstreams"`
}

// Load reads and validates DIR/trellis.yaml, reporting every problem as
// `trellis apply` reports a resource's: file:line: field: what, with the
// nearest known name for a misspelt key, and no Go type names.
func Load(dir string) (*File, error) {
	path := filepath.Join(dir, FileName)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		line := 0
		if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
			_, msg, _ = strings.Cut(msg, ": ")
			return nil, fmt.Errorf("%s:%d: %s", path, line, msg)
		}
		return nil, fmt.Errorf("%s: %s", path, msg)
	}
	var f File
	if len(root.Content) > 0 { // else an empty file: validate says what it lacks
		if err := decode(path, &root, &f); err != nil {
			return nil, err
		}
	}
	if err := f.validate(path, &root); err != nil {
		return nil, err
	}
	for _, name := range f.Resources {
		rpath := filepath.Join(dir, name)
		rf, err := os.Open(rpath)
		if err != nil {
			return nil, fmt.Errorf("%s: resources: %w", path, err)
		}
		res, err := v1.DecodeYAML(rpath, rf)
		rf.Close()
		if err != nil {
			return nil, err
		}
		f.resources = append(f.resources, res...)
	}
	// Names are checked last: a Gateway of the resource files is a caller
	// too.
	if err := f.checkNames(path, &root); err != nil {
		return nil, err
	}
	return &f, nil
}

// decode decodes root into f, reporting unknown keys and values of the
// wrong kind, each with its line and field.
func decode(path string, root *yaml.Node, f *File) error {
	doc := root.Content[0]
	if yamlfields.HasAliases(doc, 0) {
		return fmt.Errorf("%s:%d: anchors and aliases are not supported", path, doc.Line)
	}
	if doc.Kind != yaml.MappingNode {
		return fmt.Errorf("%s:%d: want a mapping of fields (mesh, services, client, intentions, resources)", path, doc.Line)
	}
	var errs []error
	for _, u := range yamlfields.Check(doc, reflect.TypeOf(f), "") {
		msg := "unknown field"
		if u.Suggestion != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", u.Suggestion)
		}
		errs = append(errs, fmt.Errorf("%s:%d: %s: %s", path, u.Line, u.Path, msg))
	}
	if err := doc.Decode(f); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return errors.Join(append(errs, fmt.Errorf("%s: %s", path, strings.TrimPrefix(err.Error(), "yaml: ")))...)
		}
		for _, m := range te.Errors {
			p, ok := yamlfields.DescribeTypeError(doc, m)
			switch {
			case !ok:
				errs = append(errs, fmt.Errorf("%s: %s", path, m))
			case p.Path == "":
				errs = append(errs, fmt.Errorf("%s:%d: %s", path, p.Line, p.Msg))
			default:
				errs = append(errs, fmt.Errorf("%s:%d: %s: %s", path, p.Line, p.Path, p.Msg))
			}
		}
	}
	return errors.Join(errs...)
}

// checkNames reports every upstream and intention that names a service
// the file does not define: a misspelt name would otherwise be accepted
// and show only as calls that fail.
func (f *File) checkNames(path string, root *yaml.Node) error {
	var services, callers []string
	for _, s := range f.Services {
		if !slices.Contains(services, s.Name) {
			services = append(services, s.Name)
		}
	}
	callers = append(callers, services...)
	if f.Client != nil {
		callers = append(callers, f.Client.Service)
	}
	for _, r := range f.resources {
		if r.Kind == v1.KindGateway {
			callers = append(callers, r.Name)
		}
	}
	var errs []error
	check := func(field, name string, known []string) {
		if name == "*" || slices.Contains(known, name) {
			return
		}
		msg := fmt.Sprintf("%q is not a service of this file", name)
		if s := yamlfields.Suggest(name, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		} else {
			msg += ": add it under services, or fix the name"
		}
		loc := path
		if line := lineOf(root, field); line > 0 {
			loc = fmt.Sprintf("%s:%d", path, line)
		}
		errs = append(errs, fmt.Errorf("%s: %s: %s", loc, field, msg))
	}
	for i, s := range f.Services {
		for j, u := range s.Upstreams {
			check(fmt.Sprintf("services[%d].upstreams[%d].service", i, j), u.Service, services)
		}
	}
	if f.Client != nil {
		for j, u := range f.Client.Upstreams {
			check(fmt.Sprintf("client.upstreams[%d].service", j), u.Service, services)
		}
	}
	for i, in := range f.Intentions {
		check(fmt.Sprintf("intentions[%d].source", i), in.Source, callers)
		check(fmt.Sprintf("intentions[%d].destination", i), in.Destination, services)
	}
	return errors.Join(errs...)
}

func (f *File) validate(path string, root *yaml.Node) error {
	var errs []error
	add := func(field string, format string, args ...any) {
		line := lineOf(root, field)
		loc := path
		if line > 0 {
			loc = fmt.Sprintf("%s:%d", path, line)
		}
		errs = append(errs, fmt.Errorf("%s: %s: %s", loc, field, fmt.Sprintf(format, args...)))
	}
	mesh := v1.Resource{Kind: v1.KindMesh, Name: v1.MeshName, Mesh: &f.Mesh}
	if err := mesh.Validate(); err != nil {
		add("mesh", "%v", err)
	}
	if len(f.Services) == 0 {
		add("services", "at least one service is required")
	}
	names := map[string]bool{}
	versions := map[string]map[string]bool{}
	protocols := map[string]string{}
	ports := map[int]string{}
	usePort := func(field string, port int, who string) {
		if port <= 0 || port > 65535 {
			add(field, "port %d is not 1-65535", port)
			return
		}
		if other, ok := ports[port]; ok {
			add(field, "port %d is already used by %s", port, other)
		}
		ports[port] = who
	}
	for i, s := range f.Services {
		at := fmt.Sprintf("services[%d]", i)
		if err := identity.ValidateServiceName(s.Name); err != nil {
			add(at+".name", "%v", err)
		}
		if names[s.Name] && (s.Version == "" || versions[s.Name][""] || versions[s.Name][s.Version]) {
			add(at+".name", "service %q appears twice: give each entry its own version", s.Name)
		}
		if p, ok := protocols[s.Name]; ok && p != s.Protocol {
			add(at+".protocol", "%q differs from the other entry of %s (%q)", s.Protocol, s.Name, p)
		}
		names[s.Name] = true
		protocols[s.Name] = s.Protocol
		if versions[s.Name] == nil {
			versions[s.Name] = map[string]bool{}
		}
		versions[s.Name][s.Version] = true
		if len(s.Command) == 0 {
			add(at+".command", "required, such as [go, run, ./app]")
		}
		if s.Replicas < 0 || s.Replicas > 20 {
			add(at+".replicas", "%d is not 0-20", s.Replicas)
		}
		if s.Replicas > 1 && slices.ContainsFunc(s.Upstreams, func(u UpstreamSpec) bool { return u.Port != 0 }) {
			add(at+".replicas", "replicas of a service with upstream ports would share them; run one, or call the upstreams by name (no port)")
		}
		if s.ServicePort < 0 || s.ServicePort > 65535 {
			add(at+".servicePort", "%d is not 1-65535", s.ServicePort)
		}
		if s.Network != "" {
			if err := identity.ValidateServiceName(s.Network); err != nil {
				add(at+".network", "%v", err)
			}
		}
		for r := 0; r < max(1, s.Replicas); r++ {
			usePort(at+".port", s.Port+r, s.Name)
			if s.Edge != nil {
				usePort(at+".edge.port", s.Edge.Port+r, s.Name+" edge")
			}
		}
		if s.Edge != nil {
			if s.Edge.Mode != "" && s.Edge.Mode != "terminate" && s.Edge.Mode != "passthrough" {
				add(at+".edge.mode", "%q is not terminate or passthrough", s.Edge.Mode)
			}
			if (s.Edge.CertFile == "") != (s.Edge.KeyFile == "") {
				add(at+".edge", "certFile and keyFile go together")
			}
			switch s.Edge.CertSource {
			case "", v1.CertFiles, v1.CertMesh, v1.CertSelfSigned:
			default:
				add(at+".edge.certSource", "%q is not files, mesh or self-signed", s.Edge.CertSource)
			}
			if s.Edge.Mode != "passthrough" && s.Edge.CertFile == "" && len(s.Edge.DNSNames) == 0 {
				add(at+".edge", "give dnsNames (a mesh-issued or self-signed certificate) or certFile and keyFile")
			}
		}
		if s.Protocol != "" {
			spec := v1.ServiceSpec{Protocol: s.Protocol}
			res := v1.Resource{Kind: v1.KindService, Name: "x", Service: &spec}
			if err := res.Validate(); err != nil {
				add(at+".protocol", "%q is not tcp, http, http2 or grpc", s.Protocol)
			}
		}
		if s.Try != "" && !strings.HasPrefix(s.Try, "/") {
			add(at+".try", "%q must start with /", s.Try)
		}
		if s.Health.HTTP != "" && !strings.HasPrefix(s.Health.HTTP, "/") {
			add(at+".health.http", "%q must start with /", s.Health.HTTP)
		}
		for j, u := range s.Upstreams {
			uat := fmt.Sprintf("%s.upstreams[%d]", at, j)
			if err := identity.ValidateServiceName(u.Service); err != nil {
				add(uat+".service", "%v", err)
			}
			switch {
			case u.Port != 0:
				usePort(uat+".port", u.Port, s.Name+" upstream "+u.Service)
			case !f.meshDNS():
				add(uat+".port", "required unless the upstream is called by name: declare mesh.dns.domains for that")
			}
		}
	}
	if f.Client != nil {
		if err := identity.ValidateServiceName(f.Client.Service); err != nil {
			add("client.service", "%v", err)
		}
		if names[f.Client.Service] {
			add("client.service", "%q is also a service; pick another name", f.Client.Service)
		}
		for j, u := range f.Client.Upstreams {
			uat := fmt.Sprintf("client.upstreams[%d]", j)
			if err := identity.ValidateServiceName(u.Service); err != nil {
				add(uat+".service", "%v", err)
			}
			usePort(uat+".port", u.Port, "client upstream "+u.Service)
		}
	}
	for i, in := range f.Intentions {
		r := v1.Resource{Kind: v1.KindIntention, Name: "x", Intention: &in}
		if err := r.Validate(); err != nil {
			add(fmt.Sprintf("intentions[%d]", i), "%s", strings.ReplaceAll(err.Error(), "\n", "; "))
		}
	}
	return errors.Join(errs...)
}

// meshDNS reports whether the file declares mesh DNS domains.
func (f *File) meshDNS() bool { return f.Mesh.DNS != nil && len(f.Mesh.DNS.Domains) > 0 }

// lineOf finds the line of a field path such as "services[1].port".
func lineOf(root *yaml.Node, path string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, part := range strings.Split(path, ".") {
		key, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 {
			key = part[:i]
			fmt.Sscanf(part[i:], "[%d]", &idx)
		}
		if n == nil || n.Kind != yaml.MappingNode {
			return line
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				next = n.Content[i+1]
				line = n.Content[i].Line
			}
		}
		n = next
		if idx >= 0 {
			if n == nil || n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}
