package appmesh

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Plan returns the cutover plan as commands to rehearse. Both meshes run
// side by side: every version of every service is deployed under Trellis
// too, under its App Mesh version name, so that Trellis callers follow the
// imported Routes and reach only Trellis instances. App Mesh's callers are
// moved by App Mesh's own routes: a virtual node for each service's
// Trellis tasks, which App Mesh's Envoys reach in plain TCP while the mesh
// is permissive, and the route's weights shifted to it step by step. A
// gateway route per service tries each through the Trellis ingress first.
// Once App Mesh carries nothing, the load balancer moves to the Trellis
// gateway and mTLS becomes strict. dir is where the resources were
// written ("" for the default, out/).
func Plan(r *Result, dir string) string {
	if dir == "" {
		dir = "out"
	}
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	var gateway string
	var gwPort int
	var services []string
	protocol := map[string]string{}
	for _, res := range r.Resources {
		switch res.Kind {
		case v1.KindService:
			services = append(services, res.Name)
			protocol[res.Name] = res.Service.Protocol
		case v1.KindGateway:
			if gateway == "" && len(res.Gateway.Listeners) > 0 {
				gateway, gwPort = res.Name, res.Gateway.Listeners[0].Port
			}
		}
	}
	p("# Cutover from App Mesh to Trellis: rehearse it in a test account first.")
	p("# 1. Start the control plane and make the mesh permissive, so that App Mesh's")
	p("#    Envoys (plain TCP) can call the Trellis sidecars while both meshes run.")
	p("trellis server --data-dir /var/lib/trellis &   # add --ca-cert/--ca-key to keep your ACM Private CA as the root")
	p("trellis apply -f - <<'EOF'")
	p("kind: Mesh")
	p("name: default")
	p("spec: {mtls: permissive, defaultPolicy: deny}")
	p("EOF")
	p("# 2. The services, who may call whom, and the imported Routes: Trellis callers")
	p("#    follow them and reach only Trellis instances.")
	p("trellis apply -f %s/services.yaml -f %s/intentions.yaml -f %s/routes.yaml", dir, dir, dir)
	p("# 3. Deploy every version of every service under Trellis too, beside its App")
	p("#    Mesh task, under the same version name; each task's sidecar answers on its")
	p("#    public port (PUBLIC_PORT below, from your platform policy).")
	deployed := map[string]bool{}
	for _, m := range r.Manifests {
		ver := versionOf(r, m.Node)
		deployed[m.Manifest.Task.Family+"/"+ver] = true
		out := strings.TrimSuffix(m.Name, ".yaml") + ".json"
		p("trellis inject ecs -f %s/manifests/%s --policy policy.yaml --version %s -o %s", dir, m.Name, ver, out)
		p("aws ecs register-task-definition --cli-input-json file://%s   # then run it as a service beside App Mesh's", out)
	}
	for _, s := range services {
		for _, v := range r.Versions[s] {
			if !deployed[s+"/"+v.Version] {
				p("# %s %s: no task definition in the input; run its app beside trellis proxy --service %s --version %s", s, v.Version, s, v.Version)
			}
		}
	}
	if gateway != "" {
		p("# 4. The Trellis gateway, with a route per service to try each before any")
		p("#    traffic moves: curl http://GATEWAY:%d/trellis-cutover/SERVICE/...", gwPort)
		p("trellis apply -f - <<'EOF'")
		p("kind: Gateway")
		p("name: %s", gateway)
		p("spec:")
		p("  listeners:")
		p("    - port: %d", gwPort)
		p("      protocol: http")
		p("      routes:")
		for _, s := range services {
			p("        - {pathPrefix: /trellis-cutover/%s/, service: %s, rewritePrefix: /}", s, s)
		}
		p("EOF")
		for _, s := range services {
			p("trellis intention allow %s %s", gateway, s)
		}
		p("trellis gateway --name %s &", gateway)
	}
	p("# 5. Move App Mesh's callers with App Mesh's own routes, a step at a time,")
	p("#    watching trellis top: a virtual node for each service's Trellis tasks")
	p("#    (TRELLIS_HOSTNAME: their DNS or Cloud Map name), then its weights.")
	planned := map[string]bool{}
	for _, mr := range r.MeshRoutes {
		mesh := mr.Mesh
		if mesh == "" {
			mesh = "MESH"
		}
		node := mr.Service + "-trellis"
		if mr.Form == FormKubernetes {
			if !planned[mr.Service] {
				p("# %s: add a VirtualNode %s (serviceDiscovery: the Trellis tasks' DNS name, listener PUBLIC_PORT) and move", mr.Service, node)
				p("#   the weights of VirtualRouter %s's route %s to it: 10, 50, then 100 (kubectl edit virtualrouter %s)", mr.Router, mr.Name, mr.Router)
			}
			planned[mr.Service] = true
			continue
		}
		if !planned[mr.Service] {
			proto := protocol[mr.Service]
			if proto == "" {
				proto = v1.ProtocolTCP
			}
			p("aws appmesh create-virtual-node --mesh-name %s --virtual-node-name %s --spec '%s'", mesh, node,
				`{"listeners":[{"portMapping":{"port":PUBLIC_PORT,"protocol":"`+proto+`"}}],"serviceDiscovery":{"dns":{"hostname":"TRELLIS_HOSTNAME"}}}`)
			planned[mr.Service] = true
		}
		for _, w := range []int{10, 50, 100} {
			spec, ok := shiftedRoute(mr.Spec, node, w)
			if !ok {
				p("# %s: route %s has no weighted targets to move; edit it by hand", mr.Service, mr.Name)
				break
			}
			p("aws appmesh update-route --mesh-name %s --virtual-router-name %s --route-name %s --spec '%s'   # %d %% to Trellis",
				mesh, mr.Router, mr.Name, spec, w)
		}
	}
	p("# 6. When App Mesh carries nothing: point the load balancer at the Trellis")
	p("#    gateway (the imported one), make mTLS strict, and delete the App Mesh")
	p("#    resources and the old tasks.")
	p("trellis apply -f %s/gateways.yaml", dir)
	p("trellis apply -f %s/mesh.yaml   # mtls strict", dir)
	return b.String()
}

// versionOf returns the version the import gave virtual node name.
func versionOf(r *Result, node string) string {
	for _, vs := range r.Versions {
		for _, v := range vs {
			if v.Node == node {
				return v.Version
			}
		}
	}
	return "v1"
}

// shiftedRoute returns the route's spec as App Mesh's API takes it (JSON),
// with pct percent of the traffic to node and the rest shared by the old
// targets as their weights shared it (largest remainders rounded up).
func shiftedRoute(spec *Node, node string, pct int) (string, bool) {
	kind, body := routeBody(spec)
	targets := body.At("action.weightedTargets").listItems()
	if kind == "" || len(targets) == 0 {
		return "", false
	}
	total := 0
	olds := make([]int, len(targets))
	for i, t := range targets {
		olds[i], _ = t.Int("weight")
		total += olds[i]
	}
	if total == 0 {
		return "", false
	}
	rest := 100 - pct
	news := make([]int, len(targets))
	given := 0
	for i, w := range olds {
		news[i] = w * rest / total
		given += news[i]
	}
	for i := 0; given < rest; i = (i + 1) % len(news) {
		if olds[i] > 0 {
			news[i]++
			given++
		}
	}
	out := jsonOf(spec).(map[string]any)
	act := out[kind].(map[string]any)["action"].(map[string]any)
	var wt []any
	for i, t := range targets {
		m := jsonOf(t).(map[string]any)
		m["weight"] = news[i]
		wt = append(wt, m)
	}
	wt = append(wt, map[string]any{"virtualNode": node, "weight": pct})
	act["weightedTargets"] = wt
	b, err := json.Marshal(out)
	if err != nil {
		return "", false
	}
	return string(b), true
}

// jsonOf turns a spec node back into what App Mesh's JSON holds: numbers
// and booleans where the scalar reads as one.
func jsonOf(n *Node) any {
	switch n.Kind {
	case Map:
		m := map[string]any{}
		for i, k := range n.Keys {
			m[k] = jsonOf(n.Vals[i])
		}
		return m
	case List:
		l := []any{}
		for _, it := range n.Items {
			l = append(l, jsonOf(it))
		}
		return l
	}
	if i, err := strconv.Atoi(n.Value); err == nil {
		return i
	}
	if n.Value == "true" || n.Value == "false" {
		return n.Value == "true"
	}
	return n.Value
}
