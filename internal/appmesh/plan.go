package appmesh

import (
	"fmt"
	"slices"
	"strings"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// Plan returns the cutover plan as commands to rehearse: Trellis beside
// App Mesh with the mesh permissive (old Envoys call the new sidecars in
// plain TCP), each service's Trellis version deployed at weight 0, a
// gateway route per service to try it through the Trellis ingress, the
// weights moved by Route, and strict mTLS once App Mesh carries nothing.
// dir is where the resources were written ("" for the default, out/).
func Plan(r *Result, dir string) string {
	if dir == "" {
		dir = "out"
	}
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	var gateway string
	var gwPort int
	var services []string
	routes := map[string]*v1.RouteSpec{}
	for _, res := range r.Resources {
		switch res.Kind {
		case v1.KindService:
			services = append(services, res.Name)
		case v1.KindGateway:
			if gateway == "" && len(res.Gateway.Listeners) > 0 {
				gateway, gwPort = res.Name, res.Gateway.Listeners[0].Port
			}
		case v1.KindRoute:
			routes[res.Name] = res.Route
		}
	}
	p("# Cutover from App Mesh to Trellis: rehearse it in a test account first.")
	p("# 1. Start the control plane and make the mesh permissive, so that App Mesh's")
	p("#    Envoys (plain TCP) can still call the Trellis sidecars while both run.")
	p("trellis server --data-dir /var/lib/trellis &   # add --ca-cert/--ca-key to keep your ACM Private CA as the root")
	p("trellis apply -f - <<'EOF'")
	p("kind: Mesh")
	p("name: default")
	p("spec: {mtls: permissive, defaultPolicy: deny}")
	p("EOF")
	p("# 2. Declare the services and who may call whom.")
	p("trellis apply -f %s/services.yaml -f %s/intentions.yaml", dir, dir)
	p("# 3. Deploy each service's Trellis version beside its App Mesh one; --apply")
	p("#    registers it at weight 0 in the service's Route.")
	for _, m := range r.Manifests {
		p("trellis inject ecs -f %s/manifests/%s --policy policy.yaml --version trellis --apply -o %s.json", dir, m.Name, strings.TrimSuffix(m.Name, ".yaml"))
	}
	for _, s := range services {
		if !slices.ContainsFunc(r.Manifests, func(m Manifest) bool { return m.Manifest.Task.Family == s }) {
			p("# %s: no task definition in the input; deploy its app with trellis proxy --service %s --version trellis", s, s)
		}
	}
	if gateway != "" {
		p("# 4. The gateway, with one route per service to try each through the Trellis")
		p("#    ingress before the load balancer moves: curl http://GATEWAY:%d/trellis-cutover/SERVICE/...", gwPort)
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
		p("trellis gateway --name %s &   # then point a share of the load balancer at it", gateway)
	}
	p("# 5. Move the traffic by Route, a step at a time, watching trellis top:")
	for _, s := range services {
		if _, ok := routes[s]; !ok {
			continue
		}
		for _, w := range []int{10, 50, 100} {
			p("trellis apply -f - <<'EOF'   # %s: %d %% to the Trellis version", s, w)
			p("kind: Route")
			p("name: %s", s)
			p("spec: {rules: [{targets: [{version: trellis, weight: %d}, %s]}]}", w, oldTargets(r, s, 100-w))
			p("EOF")
		}
	}
	p("# 6. When App Mesh carries nothing: the imported routes and gateway, strict mTLS,")
	p("#    and the App Mesh resources deleted.")
	p("trellis apply -f %s/routes.yaml -f %s/gateways.yaml", dir, dir)
	p("trellis apply -f %s/mesh.yaml   # mtls strict", dir)
	return b.String()
}

// oldTargets spreads weight over a service's imported versions, as the
// import found them.
func oldTargets(r *Result, svc string, weight int) string {
	vs := r.Versions[svc]
	if len(vs) == 0 {
		return ""
	}
	var parts []string
	each, rest := weight/len(vs), weight%len(vs)
	for i, v := range vs {
		w := each
		if i == 0 {
			w += rest
		}
		parts = append(parts, fmt.Sprintf("{version: %s, weight: %d}", v.Version, w))
	}
	return strings.Join(parts, ", ")
}
