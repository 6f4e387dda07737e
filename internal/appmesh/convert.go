package appmesh

import (
	"cmp"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/inject"
)

// Result is what Convert makes of a set of Objects.
type Result struct {
	// Resources in the order they are applied: Mesh, Services,
	// Intentions, Routes, Gateways.
	Resources []v1.Resource
	// Manifests for trellis inject, one per virtual node whose task
	// definition the input holds.
	Manifests []Manifest
	Report    Report
	// Versions lists each service's versions, from its virtual nodes.
	Versions map[string][]Version
	// MeshRoutes are the App Mesh routes the services came from, for the
	// cutover plan, which moves App Mesh's own weights.
	MeshRoutes []MeshRoute
}

// MeshRoute is one App Mesh route of a service's virtual router.
type MeshRoute struct {
	Service            string
	Form               Form
	Mesh, Router, Name string
	Spec               *Node
}

// Version is one virtual node as a version of a Service.
type Version struct {
	Node    string // the App Mesh virtual node
	Version string
	// HealthPath is the node's HTTP health check path ("" for TCP).
	HealthPath string
	Port       int
	Backends   []string
}

// Manifest is one trellis inject manifest.
type Manifest struct {
	// Name is the file name: <service>-<version>.yaml.
	Name     string
	Node     string
	Manifest inject.Manifest
}

// service is a Trellis service being built.
type service struct {
	name     string
	spec     v1.ServiceSpec
	router   string // the virtual router providing it, if any
	obj      *Object
	hasRoute bool
}

// node is a virtual node as a version of a service.
type node struct {
	obj      *Object
	svc      string
	version  string
	health   string
	port     int
	protocol string
	backends []string
}

type conv struct {
	rep                    Report
	services               map[string]*service
	order                  []string          // service names, first seen first
	vsByRef                map[string]string // App Mesh VS name, k8s name, awsName -> service
	nodes                  map[string]*node  // by node name (and awsName)
	nodeOrder              []*node
	routers                map[string]*Object
	domains                []string
	permissive, strictSeen bool
	intentions             []v1.Resource
	routes                 []v1.Resource
	gateways               []v1.Resource
	hostOwner              map[string]string
	meshRoutes             []MeshRoute
}

// Convert maps App Mesh objects to Trellis resources, manifests and a
// report of what did not carry over. It fails only when the objects
// contradict each other (a route to an unknown node) or the result would
// not be valid.
func Convert(objs []Object) (*Result, error) {
	c := &conv{services: map[string]*service{}, vsByRef: map[string]string{}, nodes: map[string]*node{},
		routers: map[string]*Object{}, hostOwner: map[string]string{}}
	by := map[string][]*Object{}
	for i := range objs {
		o := &objs[i]
		by[o.Type] = append(by[o.Type], o)
	}
	var errs []error
	meshes := c.meshes(by[TypeMesh])
	for _, o := range by[TypeVirtualRouter] {
		c.routers[o.Name] = o
	}
	c.virtualServices(by[TypeVirtualService])
	errs = append(errs, c.assignNodes(by[TypeVirtualNode], by[TypeRoute])...)
	for _, o := range by[TypeVirtualRouter] {
		c.virtualRouter(o)
	}
	for _, n := range c.nodeOrder {
		c.virtualNode(n)
	}
	errs = append(errs, c.routeRules(by[TypeRoute])...)
	errs = append(errs, c.virtualGateways(by[TypeVirtualGateway], by[TypeGatewayRoute])...)
	manifests := c.manifests(by[TypeTaskDefinition])
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	mesh := &v1.MeshSpec{DefaultPolicy: v1.Deny, MTLS: v1.MTLSStrict}
	if c.permissive {
		mesh.MTLS = v1.MTLSPermissive
	}
	if len(c.domains) > 0 {
		mesh.DNS = &v1.MeshDNS{Domains: c.domains}
	}
	_ = meshes
	res := []v1.Resource{{Kind: v1.KindMesh, Name: v1.MeshName, Mesh: mesh}}
	for _, name := range c.order {
		s := c.services[name]
		spec := s.spec
		res = append(res, v1.Resource{Kind: v1.KindService, Name: name, Service: &spec})
	}
	res = append(res, c.intentions...)
	res = append(res, c.routes...)
	res = append(res, c.gateways...)
	for i := range objs {
		if objs[i].Type == TypeTaskDefinition {
			continue // read for the manifests only
		}
		c.rep.leftovers(objs[i].Spec)
		c.rep.leftovers(objs[i].Rest)
	}
	for i := range res {
		if err := res[i].Validate(); err != nil {
			errs = append(errs, fmt.Errorf("the %s %s made from the input is not valid: %w", res[i].Kind, res[i].Name, err))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	c.rep.sort()
	out := &Result{Resources: res, Manifests: manifests, Report: c.rep, Versions: map[string][]Version{}, MeshRoutes: c.meshRoutes}
	for _, n := range c.nodeOrder {
		out.Versions[n.svc] = append(out.Versions[n.svc], Version{Node: n.obj.Name, Version: n.version, HealthPath: n.health, Port: n.port, Backends: n.backends})
	}
	return out, nil
}

func errAt(n *Node, format string, args ...any) error {
	return &Error{File: n.File, Line: n.Line, Field: n.Path, Msg: fmt.Sprintf(format, args...)}
}

// meshes maps Mesh objects onto the one Trellis mesh.
func (c *conv) meshes(objs []*Object) []string {
	var names []string
	for _, o := range objs {
		names = append(names, o.Name)
		s := o.Spec
		switch t := s.At("egressFilter.type"); {
		case t == nil:
		case strings.EqualFold(t.Value, "DROP_ALL"):
			c.rep.note(t, "carried: each sidecar reaches only the upstreams it is given (its backends), and intentions deny the rest")
		default:
			c.rep.note(t, "ALLOW_ALL: Trellis sidecars do not stand between apps and hosts outside the mesh; such calls go as before")
		}
		s.Str("awsName")
		if ip := s.At("serviceDiscovery.ipPreference"); ip != nil {
			c.rep.drop(ip, "IP version preference is not carried", "not supported: sidecars use the addresses instances register")
		}
	}
	return names
}

// svcName makes a Trellis service name from an App Mesh name: its first
// DNS label, lowercase, with other characters turned into hyphens.
func svcName(name string) string {
	first, _, _ := strings.Cut(name, ".")
	return sanitize(first)
}

var notName = regexp.MustCompile(`[^a-z0-9-]+`)

func sanitize(s string) string {
	s = notName.ReplaceAllString(strings.ToLower(s), "-")
	s = strings.Trim(s, "-")
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		s = "s-" + s
	}
	if len(s) > 63 {
		s = strings.TrimRight(s[:63], "-")
	}
	return s
}

func (c *conv) addService(name string, o *Object) *service {
	if s, ok := c.services[name]; ok {
		return s
	}
	s := &service{name: name, obj: o}
	c.services[name] = s
	c.order = append(c.order, name)
	return s
}

// addName makes a DNS name the service's: a domain of the mesh when the
// name is <service>.<domain>, else one of its hostnames.
func (c *conv) addName(s *service, full string, at *Node) {
	full = strings.ToLower(strings.TrimSuffix(full, "."))
	if !strings.Contains(full, ".") || v1.ValidateMeshDNSName(full) != nil {
		return
	}
	if owner, ok := c.hostOwner[full]; ok {
		if owner != s.name && at != nil {
			c.rep.add(at, LevelDropped, fmt.Sprintf("the name %s already belongs to service %s", full, owner), "spec.hostnames of one Service")
		}
		return
	}
	c.hostOwner[full] = s.name
	if first, domain, _ := strings.Cut(full, "."); first == s.name {
		if !slices.Contains(c.domains, domain) {
			c.domains = append(c.domains, domain)
		}
		return
	}
	s.spec.Hostnames = append(s.spec.Hostnames, full)
}

// ref reads a reference to an App Mesh resource of kind (virtualNode,
// virtualService, virtualRouter) in any form: a name, a NAME field, a
// Kubernetes REF {name}, or an ARN.
func ref(n *Node, kind string) string {
	if n == nil {
		return ""
	}
	if v := n.Get(kind); v != nil && v.Kind == Scalar {
		v.used = true
		return v.Value
	}
	if v := n.Str(kind + "Name"); v != "" {
		return v
	}
	if r := n.Get(kind + "Ref"); r != nil {
		r.Str("namespace")
		return r.Str("name")
	}
	if arn := n.Str(kind + "ARN"); arn != "" {
		return arn[strings.LastIndex(arn, "/")+1:]
	}
	return ""
}

func (c *conv) virtualServices(objs []*Object) {
	for _, o := range objs {
		name := svcName(o.Name)
		if o.Form == FormKubernetes {
			name = sanitize(o.Name)
		}
		if s, ok := c.services[name]; ok && s.obj != nil {
			alt := sanitize(o.Name)
			c.rep.add(o.Spec, LevelNote, fmt.Sprintf("service name %s is taken by %s; this one is %s", name, s.obj.Where, alt), "")
			name = alt
		}
		s := c.addService(name, o)
		c.vsByRef[o.Name] = name
		full := o.Name
		if aws := o.Spec.Str("awsName"); aws != "" {
			c.vsByRef[aws] = name
			full = aws
		}
		o.Spec.Get("meshRef").Use()
		c.addName(s, full, o.Spec)
		prov := o.Spec.Get("provider")
		switch {
		case prov.Get("virtualRouter") != nil:
			s.router = ref(prov.Get("virtualRouter"), "virtualRouter")
		case prov.Get("virtualNode") != nil:
			n := ref(prov.Get("virtualNode"), "virtualNode")
			c.nodes[n] = &node{svc: name}
		default:
			s.spec.Protocol = v1.ProtocolTCP
			c.rep.add(o.Spec, LevelDropped, "a virtual service with no provider: nothing serves it", "instances register themselves with trellis proxy")
		}
	}
}

// assignNodes decides the service and version of each virtual node.
func (c *conv) assignNodes(nodes, routes []*Object) []error {
	var errs []error
	routerSvc := map[string]string{}
	for _, name := range c.order {
		if r := c.services[name].router; r != "" {
			if _, ok := routerSvc[r]; !ok {
				routerSvc[r] = name
			}
		}
	}
	for _, rt := range routes {
		svc, ok := routerSvc[rt.Parent]
		if !ok {
			continue // a router no service uses; its routes are reported below
		}
		for _, t := range routeTargets(rt.Spec) {
			n := ref(t, "virtualNode")
			if c.nodes[n] == nil {
				c.nodes[n] = &node{svc: svc}
			}
		}
	}
	for _, o := range nodes {
		n := c.nodes[o.Name]
		if n == nil {
			if aws := o.Spec.Get("awsName"); aws != nil && c.nodes[aws.Value] != nil {
				n = c.nodes[aws.Value]
			}
		}
		if n == nil {
			// A node behind no service: a caller only. Its name is its
			// identity.
			n = &node{svc: sanitize(strings.TrimSuffix(strings.TrimSuffix(o.Name, "-vn"), "-node"))}
			c.addService(n.svc, nil)
		}
		n.obj = o
		c.nodes[o.Name] = n
		c.nodeOrder = append(c.nodeOrder, n)
		n.version = nodeVersion(o, n.svc)
	}
	for name, n := range c.nodes {
		if n.obj == nil {
			errs = append(errs, fmt.Errorf("virtual node %s is used (by a provider or a route of service %s) but not defined in the input", name, n.svc))
		}
	}
	slices.SortFunc(errs, func(a, b error) int { return cmp.Compare(a.Error(), b.Error()) })
	return errs
}

// nodeVersion is a node's version label: a Kubernetes pod selector's
// version label, else the node's name without the service's (and a
// -vn suffix): hello-backend-v1 is v1.
func nodeVersion(o *Object, svc string) string {
	if labels := o.Spec.At("podSelector.matchLabels"); labels != nil {
		for _, k := range []string{"version", "app.kubernetes.io/version"} {
			if v := labels.Str(k); v != "" {
				return sanitize(v)
			}
		}
	}
	v := strings.ToLower(o.Name)
	v = strings.TrimSuffix(strings.TrimSuffix(v, "-vn"), "-node")
	if rest, ok := strings.CutPrefix(v, svc); ok && strings.Trim(rest, "-_.") != "" {
		v = strings.Trim(rest, "-_.")
	}
	v = strings.Trim(notName.ReplaceAllString(v, "-"), "-")
	if len(v) > 40 {
		v = strings.Trim(v[:40], "-")
	}
	if v == "" {
		v = "v1"
	}
	return v
}

func (c *conv) virtualRouter(o *Object) {
	o.Spec.Str("awsName")
	o.Spec.Get("meshRef").Use()
	var svcs []*service
	for _, name := range c.order {
		if c.services[name].router == o.Name {
			svcs = append(svcs, c.services[name])
		}
	}
	ls := o.Spec.List("listeners")
	for i, l := range ls {
		if i > 0 {
			c.rep.drop(l, "a second listener is not carried: a Trellis service has one port and protocol", "another Service")
			continue
		}
		port, _ := l.Int("portMapping.port")
		proto := strings.ToLower(l.Str("portMapping.protocol"))
		for _, s := range svcs {
			s.spec.Port, s.spec.Protocol = port, proto
		}
	}
	if len(svcs) == 0 {
		c.rep.add(o.Spec, LevelDropped, "a virtual router no virtual service uses is not carried", "a Route is named after its service")
	}
}

func (c *conv) virtualNode(n *node) {
	o, s := n.obj, c.services[n.svc]
	spec := o.Spec
	spec.Str("awsName")
	spec.Get("meshRef").Use()
	spec.Get("podSelector").Use() // pods join by trellis inject; the version label is read above
	for i, l := range spec.List("listeners") {
		if i > 0 {
			c.rep.drop(l, "a second listener is not carried: a Trellis service has one port and protocol", "another Service")
			continue
		}
		n.port, _ = l.Int("portMapping.port")
		n.protocol = strings.ToLower(l.Str("portMapping.protocol"))
		if s.router == "" && s.spec.Protocol == "" {
			s.spec.Port, s.spec.Protocol = n.port, n.protocol
		}
		c.healthCheck(n, l.Get("healthCheck"))
		c.listenerTLS(l.Get("tls"))
		c.connectionPool(s, l.Get("connectionPool"))
		if t := l.Get("timeout"); t != nil {
			c.rep.drop(t, "a listener's timeouts (the node's inbound) are not carried", "timeout of the Route's rules, set by the caller's sidecar")
		}
	}
	sd := spec.Get("serviceDiscovery")
	if h := sd.Get("dns"); h != nil {
		c.addName(s, h.Str("hostname"), h)
	}
	if cm := sd.Get("awsCloudMap"); cm != nil {
		ns, name := cm.Str("namespaceName"), cm.Str("serviceName")
		c.addName(s, name+"."+ns, cm)
		if a := cm.Get("attributes"); a != nil {
			c.rep.note(a, fmt.Sprintf("Cloud Map attributes select instances; in Trellis this node's instances are version %s of %s", n.version, n.svc))
		}
	}
	for _, b := range spec.List("backends") {
		vs := b.Get("virtualService")
		target := ref(vs, "virtualService")
		dst, ok := c.vsByRef[target]
		if !ok {
			dst = svcName(target)
		}
		if cp := vs.Get("clientPolicy"); cp != nil {
			c.rep.note(cp, "client TLS policy: every Trellis sidecar calls with mTLS and checks the callee's SPIFFE ID")
		}
		if slices.Contains(n.backends, dst) {
			continue
		}
		n.backends = append(n.backends, dst)
		c.allow(n.svc, dst)
	}
	if bd := spec.Get("backendDefaults"); bd != nil {
		c.rep.note(bd, "backend defaults (client TLS): every Trellis sidecar calls with mTLS and checks the callee's SPIFFE ID")
	}
}

func (c *conv) healthCheck(n *node, h *Node) {
	if h == nil {
		return
	}
	switch strings.ToLower(h.Str("protocol")) {
	case "http", "http2":
		n.health = h.Str("path")
	case "grpc":
		c.rep.add(h, LevelDropped, "a gRPC health check is not carried", "an HTTP path (health: {http: PATH}) or a TCP connect")
	}
	if p, ok := h.Int("port"); ok && p != n.port {
		c.rep.add(h.Get("port"), LevelDropped, "a health check on another port is not carried", "the sidecar checks the app's port")
	}
	for _, k := range []string{"healthyThreshold", "unhealthyThreshold", "intervalMillis", "timeoutMillis"} {
		if v := h.Get(k); v != nil {
			c.rep.drop(v, "health check timing is not carried", "the sidecar's own schedule")
		}
	}
}

// listenerTLS maps a listener's TLS mode to the mesh's mTLS mode.
func (c *conv) listenerTLS(t *Node) {
	if t == nil {
		return
	}
	switch mode := strings.ToUpper(t.Str("mode")); mode {
	case "PERMISSIVE":
		c.permissive = true
		c.rep.note(t.Get("mode"), "PERMISSIVE: the mesh's mtls is permissive (inbound also takes plain TCP, with no identity); set strict once every caller is in the mesh")
	case "STRICT":
		c.strictSeen = true
		c.rep.note(t.Get("mode"), "STRICT: Trellis's default, mtls strict")
	case "DISABLED":
		c.rep.note(t.Get("mode"), "DISABLED: Trellis encrypts every call between sidecars with mTLS regardless")
	}
	if cert := t.Get("certificate"); cert != nil {
		if cert.Get("acm") != nil {
			c.rep.note(cert, "ACM certificate: Trellis issues SPIFFE certificates from its CA; to keep your ACM Private CA as the root, import it (trellis server --ca-cert, --ca-key)")
		} else {
			c.rep.note(cert, "listener certificate: Trellis issues SPIFFE certificates from its CA (trellis server --ca-cert, --ca-key import one)")
		}
	}
	if v := t.Get("validation"); v != nil {
		c.rep.note(v, "peer validation: Trellis checks every caller's SPIFFE ID against the trust bundle; intentions say who may call")
	}
}

// connectionPool maps a listener's connection pool to Service limits.
func (c *conv) connectionPool(s *service, p *Node) {
	if p == nil {
		return
	}
	lim := s.spec.Limits
	if lim == nil {
		lim = &v1.ServiceLimits{}
	}
	set := func(dst *int, v *Node) {
		if v == nil {
			return
		}
		i, err := strconv.Atoi(strings.TrimSpace(v.Value))
		if err != nil || i <= 0 {
			c.rep.drop(v, "not a positive integer", "")
			return
		}
		v.used = true
		if *dst == 0 || i < *dst {
			*dst = i
		}
	}
	set(&lim.MaxConnections, p.At("tcp.maxConnections"))
	if v := p.At("http.maxConnections"); v != nil {
		set(&lim.MaxRequests, v)
		c.rep.note(v, "maxConnections of HTTP/1.1 bounds concurrent requests: limits.maxRequests, applied by each caller's sidecar")
	}
	set(&lim.MaxPendingRequests, p.At("http.maxPendingRequests"))
	set(&lim.MaxRequests, p.At("http2.maxRequests"))
	set(&lim.MaxRequests, p.At("grpc.maxRequests"))
	if *lim != (v1.ServiceLimits{}) {
		s.spec.Limits = lim
	}
}

// allow adds the intention that lets src call dst, once.
func (c *conv) allow(src, dst string) {
	name := src + "." + dst
	if slices.ContainsFunc(c.intentions, func(i v1.Resource) bool { return i.Name == name }) {
		return
	}
	c.intentions = append(c.intentions, v1.Resource{Kind: v1.KindIntention, Name: name,
		Intention: &v1.IntentionSpec{Source: src, Destination: dst, Action: v1.Allow}})
}
