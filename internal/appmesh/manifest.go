package appmesh

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/trellis-mesh/trellis/internal/inject"
)

// envoyContainer reports whether a task definition's container is App
// Mesh's plumbing (Envoy, the X-Ray daemon, the CloudWatch agent), which
// the Trellis sidecar replaces or the platform policy adds.
func envoyContainer(ct *Node) bool {
	name, image := strings.ToLower(ct.Str("name")), strings.ToLower(ct.Str("image"))
	return name == "envoy" || strings.Contains(image, "aws-appmesh-envoy") ||
		strings.Contains(name, "xray") || strings.Contains(image, "xray") || strings.Contains(image, "cloudwatch-agent")
}

// taskNode finds the virtual node a task definition's Envoy serves: the
// APPMESH_RESOURCE_ARN (or APPMESH_VIRTUAL_NODE_NAME) of its containers,
// mesh/MESH/virtualNode/NAME.
func taskNode(td *Node) string {
	for _, ct := range td.List("containerDefinitions") {
		for _, e := range ct.At("environment").listItems() {
			switch e.Str("name") {
			case "APPMESH_RESOURCE_ARN", "APPMESH_VIRTUAL_NODE_NAME":
				if _, n, ok := strings.Cut(e.Str("value"), "/virtualNode/"); ok {
					return n
				}
			}
		}
	}
	return ""
}

// manifests makes a trellis inject manifest for each virtual node whose
// task definition names its image and port.
func (c *conv) manifests(tds []*Object) []Manifest {
	var out []Manifest
	for _, td := range tds {
		spec := td.Spec
		nodeName := taskNode(spec)
		n := c.nodes[nodeName]
		if n == nil || n.obj == nil {
			continue // not a mesh task, or its node is not in the input
		}
		var app *Node
		for _, ct := range spec.List("containerDefinitions") {
			if !envoyContainer(ct) && len(ct.At("portMappings").listItems()) > 0 {
				app = ct
				break
			}
		}
		if app == nil {
			c.rep.add(spec, LevelNote, fmt.Sprintf("task definition %s names no app container with a port: no inject manifest for %s", td.Name, nodeName), "")
			continue
		}
		port := 0
		if items := app.At("portMappings").listItems(); len(items) > 0 {
			port, _ = items[0].Int("containerPort")
		}
		m := inject.Manifest{
			Task: inject.Task{Family: n.svc},
			AppContainer: inject.AppContainer{Image: app.Str("image"), Port: port, HealthCheckPath: n.health,
				Command: strs(app.At("command"))},
			VirtualNode: inject.VirtualNode{Backends: slices.Clone(n.backends), Protocol: n.protocol},
		}
		m.Task.Cpu, _ = strconv.Atoi(spec.Str("cpu"))
		m.Task.Memory, _ = strconv.Atoi(spec.Str("memory"))
		if slices.ContainsFunc(spec.At("requiresCompatibilities").listItems(), func(v *Node) bool { return strings.EqualFold(v.Value, "FARGATE") }) {
			m.Task.LaunchType = "FARGATE"
		}
		for _, e := range app.At("environment").listItems() {
			if m.AppContainer.Environment == nil {
				m.AppContainer.Environment = map[string]string{}
			}
			m.AppContainer.Environment[e.Str("name")] = e.Str("value")
		}
		for _, e := range app.At("secrets").listItems() {
			if m.AppContainer.Secrets == nil {
				m.AppContainer.Secrets = map[string]string{}
			}
			m.AppContainer.Secrets[e.Str("name")] = e.Str("valueFrom")
		}
		c.rep.add(spec, LevelNote, fmt.Sprintf("task definition %s: the app container's image, port, command and environment go into manifests/%s-%s.yaml; the Envoy container, proxy configuration, roles and logging come from the platform policy of trellis inject", td.Name, n.svc, n.version), "")
		out = append(out, Manifest{Name: n.svc + "-" + n.version + ".yaml", Node: nodeName, Manifest: m})
	}
	return out
}

func strs(n *Node) []string {
	var out []string
	for _, v := range n.listItems() {
		out = append(out, v.Value)
	}
	return out
}
