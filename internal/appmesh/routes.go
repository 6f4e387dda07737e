package appmesh

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// routeKinds are a route spec's protocol keys.
var routeKinds = []string{"httpRoute", "http2Route", "grpcRoute", "tcpRoute"}

// routeBody returns the one protocol section of a route spec.
func routeBody(spec *Node) (string, *Node) {
	for _, k := range routeKinds {
		if b := spec.Get(k); b != nil {
			return k, b
		}
	}
	return "", nil
}

func routeTargets(spec *Node) []*Node {
	_, b := routeBody(spec)
	return b.At("action.weightedTargets").listItems()
}

func (n *Node) listItems() []*Node {
	if n == nil || n.Kind != List {
		return nil
	}
	return n.Items
}

// duration turns {unit, value} into a Go duration.
func duration(d *Node) (string, bool) {
	if d == nil {
		return "", false
	}
	v, ok := d.Int("value")
	unit := d.Str("unit")
	if !ok || v <= 0 || (unit != "ms" && unit != "s") {
		return "", false
	}
	return strconv.Itoa(v) + unit, true
}

// priority orders routes: lower first, none last, then as written.
func priority(o *Object) int {
	if p, ok := o.Spec.Int("priority"); ok {
		return p
	}
	return 1 << 20
}

var ruleNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func (c *conv) routeRules(routes []*Object) []error {
	var errs []error
	byRouter := map[string][]*Object{}
	var routers []string
	for _, rt := range routes {
		if _, ok := byRouter[rt.Parent]; !ok {
			routers = append(routers, rt.Parent)
		}
		byRouter[rt.Parent] = append(byRouter[rt.Parent], rt)
	}
	for _, router := range routers {
		rts := byRouter[router]
		slices.SortStableFunc(rts, func(a, b *Object) int { return cmp.Compare(priority(a), priority(b)) })
		var svcs []*service
		for _, name := range c.order {
			if c.services[name].router == router {
				svcs = append(svcs, c.services[name])
			}
		}
		if len(svcs) == 0 {
			for _, rt := range rts {
				c.rep.drop(rt.Spec, fmt.Sprintf("a route of virtual router %s, which no virtual service uses, is not carried", router), "not supported")
			}
			continue
		}
		s := svcs[0]
		var rules []v1.RouteRule
		for _, rt := range rts {
			c.meshRoutes = append(c.meshRoutes, MeshRoute{Service: s.name, Form: rt.Form, Mesh: rt.Mesh, Router: router, Name: rt.Name, Spec: rt.Spec})
			rule, ok := c.routeRule(rt, s)
			if ok {
				rules = append(rules, rule)
			}
		}
		if len(rules) == 0 {
			continue
		}
		for _, s := range svcs {
			c.routes = append(c.routes, v1.Resource{Kind: v1.KindRoute, Name: s.name, Route: &v1.RouteSpec{Rules: rules}})
		}
	}
	return errs
}

func (c *conv) routeRule(rt *Object, s *service) (v1.RouteRule, bool) {
	kind, b := routeBody(rt.Spec)
	rt.Spec.Int("priority")
	rt.Spec.Str("name") // a Kubernetes inline route's name
	rule := v1.RouteRule{}
	if name := sanitize(rt.Name); ruleNameRE.MatchString(name) {
		rule.Name = name
	}
	if b == nil {
		c.rep.drop(rt.Spec, "a route with no httpRoute, http2Route, grpcRoute or tcpRoute", "not supported")
		return rule, false
	}
	var targets []v1.RouteTarget
	for _, t := range b.List("action.weightedTargets") {
		name := ref(t, "virtualNode")
		w, _ := t.Int("weight")
		n := c.nodes[name]
		if n == nil {
			continue // reported by assignNodes
		}
		if n.svc != s.name {
			c.rep.drop(t, fmt.Sprintf("a target in service %s, not %s: Trellis routes among one service's versions", n.svc, s.name), "an upstream of the caller")
			continue
		}
		targets = append(targets, v1.RouteTarget{Version: n.version, Weight: w})
	}
	if kind == "tcpRoute" {
		if len(targets) > 1 {
			c.rep.add(b.Get("action"), LevelDropped, "weighted targets of a tcp route are not carried: a tcp service's versions share its connections alike", "protocol http, http2 or grpc and a Route")
		}
		if m := b.Get("match"); m != nil {
			c.rep.drop(m, "a tcp route's match is not carried", "not supported")
		}
		if t := b.Get("timeout"); t != nil {
			c.rep.drop(t, "a tcp route's idle timeout is not carried", "not supported")
		}
		return rule, false
	}
	rule.Targets = targets
	m := b.Get("match")
	if kind == "grpcRoute" {
		svc, method := m.Str("serviceName"), m.Str("methodName")
		switch {
		case svc != "" && method != "":
			rule.Match.PathExact = "/" + svc + "/" + method
		case svc != "":
			rule.Match.PathPrefix = "/" + svc + "/"
		}
		rule.Match.Headers = c.headers(m.Get("metadata"))
	} else {
		if p := m.Str("prefix"); p != "" {
			rule.Match.PathPrefix = p
		}
		if p := m.Get("path"); p != nil {
			rule.Match.PathExact = p.Str("exact")
			rule.Match.PathRegex = p.Str("regex")
		}
		if meth := m.Str("method"); meth != "" {
			rule.Match.Methods = []string{strings.ToUpper(meth)}
		}
		rule.Match.Headers = c.headers(m.Get("headers"))
	}
	if rule.Match.PathPrefix == "/" {
		rule.Match.PathPrefix = ""
	}
	if d, ok := duration(b.At("timeout.perRequest")); ok {
		rule.Timeout = d
	}
	rule.Retries = c.retries(b.Get("retryPolicy"))
	return rule, true
}

// headers maps header (or gRPC metadata) matches.
func (c *conv) headers(hs *Node) []v1.HeaderMatch {
	var out []v1.HeaderMatch
	for _, h := range hs.listItems() {
		hm := v1.HeaderMatch{Name: strings.ToLower(h.Str("name"))}
		if inv := h.Get("invert"); inv != nil {
			if strings.EqualFold(inv.Value, "true") {
				c.rep.drop(inv, "an inverted header match is not carried; the rule matches without it", "not supported")
			} else {
				inv.used = true
			}
		}
		m := h.Get("match")
		hm.Exact, hm.Prefix, hm.Regex = m.Str("exact"), m.Str("prefix"), m.Str("regex")
		if suf := m.Get("suffix"); suf != nil {
			hm.Regex = ".*" + regexp.QuoteMeta(suf.Value)
			c.rep.note(suf, "a suffix match is carried as headers[].regex "+strconv.Quote(hm.Regex))
		}
		if r := m.Get("range"); r != nil {
			c.rep.drop(r, "a numeric range match is not carried; the rule matches without it", "headers[].regex")
			continue
		}
		out = append(out, hm)
	}
	return out
}

// retryEvents maps App Mesh retry events to Trellis conditions ("" for
// one Trellis has no equivalent of).
var retryEvents = map[string]string{
	"server-error": v1.Retry5xx, "gateway-error": v1.RetryGatewayError, "stream-error": v1.RetryReset,
	"connection-error": v1.RetryConnectFailure,
	"unavailable":      v1.RetryGRPC, "resource-exhausted": v1.RetryGRPC, "deadline-exceeded": v1.RetryGRPC,
	"client-error": "", "cancelled": "", "internal": "",
}

func (c *conv) retries(p *Node) *v1.RetryPolicy {
	if p == nil {
		return nil
	}
	max, _ := p.Int("maxRetries")
	rp := &v1.RetryPolicy{Attempts: max + 1}
	if rp.Attempts > 10 {
		c.rep.add(p.Get("maxRetries"), LevelDropped, fmt.Sprintf("%d retries: Trellis makes at most 10 attempts", max), "retries.attempts: 10")
		rp.Attempts = 10
	}
	if d, ok := duration(p.Get("perRetryTimeout")); ok {
		rp.PerTryTimeout = d
	}
	for _, k := range []string{"httpRetryEvents", "tcpRetryEvents", "grpcRetryEvents"} {
		for _, e := range p.List(k) {
			on, known := retryEvents[strings.ToLower(e.Value)]
			if on == "" {
				if known {
					c.rep.drop(e, fmt.Sprintf("retry on %s is not carried", e.Value), "retries.on: connect-failure, reset, 5xx, gateway-error, retriable-grpc")
				}
				continue
			}
			e.used = true
			if !slices.Contains(rp.On, on) {
				rp.On = append(rp.On, on)
			}
		}
	}
	if rp.Attempts < 2 {
		return nil
	}
	return rp
}

// virtualGateways maps each virtual gateway and its routes to a Gateway.
func (c *conv) virtualGateways(gws, grs []*Object) []error {
	var errs []error
	byGW := map[string][]*Object{}
	for _, gr := range grs {
		parent := gr.Parent
		if gr.Form == FormKubernetes && parent == "" {
			// A Kubernetes gateway route belongs to the gateways whose
			// selectors match it; with one gateway in the input, that one.
			if len(gws) != 1 {
				errs = append(errs, errAt(gr.Spec, "GatewayRoute %s: %d virtual gateways in the input; import them one at a time", gr.Name, len(gws)))
				continue
			}
			parent = gws[0].Name
		}
		byGW[parent] = append(byGW[parent], gr)
	}
	for _, gw := range gws {
		name := sanitize(gw.Name)
		spec := gw.Spec
		spec.Str("awsName")
		spec.Get("meshRef").Use()
		for _, k := range []string{"podSelector", "namespaceSelector", "gatewayRouteSelector"} {
			spec.Get(k).Use() // Kubernetes wiring: which pods and routes
		}
		if bd := spec.Get("backendDefaults"); bd != nil {
			c.rep.note(bd, "backend defaults (client TLS): the gateway calls every service with mTLS under its own SPIFFE ID")
		}
		routes := byGW[gw.Name]
		slices.SortStableFunc(routes, func(a, b *Object) int { return cmp.Compare(priority(a), priority(b)) })
		var grs []v1.GatewayRoute
		var ports []int
		for _, gr := range routes {
			r, port, ok := c.gatewayRoute(gr)
			if !ok {
				continue
			}
			grs = append(grs, r)
			ports = append(ports, port)
			c.allow(name, r.Service)
		}
		g := &v1.GatewaySpec{}
		for _, l := range spec.List("listeners") {
			port, _ := l.Int("portMapping.port")
			l.Str("portMapping.protocol") // http, http2 and grpc all arrive over HTTP
			gl := v1.GatewayListener{Port: port, Protocol: v1.GatewayHTTP}
			if t := l.Get("tls"); t != nil {
				c.gatewayTLS(&gl, t)
			}
			if h := l.Get("healthCheck"); h != nil {
				c.rep.drop(h, "the gateway's own health check is not carried", "trellis gateway's admin /ready")
			}
			if p := l.Get("connectionPool"); p != nil {
				c.rep.drop(p, "the gateway's connection pool is not carried", "spec.limits of each Service, applied by every caller")
			}
			for i, r := range grs {
				if ports[i] == 0 || ports[i] == port {
					gl.Routes = append(gl.Routes, r)
				}
			}
			g.Listeners = append(g.Listeners, gl)
		}
		c.gateways = append(c.gateways, v1.Resource{Kind: v1.KindGateway, Name: name, Gateway: g})
	}
	for parent, rs := range byGW {
		if !slices.ContainsFunc(gws, func(o *Object) bool { return o.Name == parent }) {
			for _, r := range rs {
				errs = append(errs, errAt(r.Spec, "GatewayRoute %s: virtual gateway %s is not in the input", r.Name, parent))
			}
		}
	}
	slices.SortFunc(errs, func(a, b error) int { return cmp.Compare(a.Error(), b.Error()) })
	return errs
}

func (c *conv) gatewayTLS(gl *v1.GatewayListener, t *Node) {
	mode := strings.ToUpper(t.Str("mode"))
	if mode == "DISABLED" {
		return
	}
	gl.Protocol = v1.GatewayHTTPS
	cert := t.Get("certificate")
	if f := cert.Get("file"); f != nil {
		gl.TLS = &v1.GatewayTLS{Source: v1.CertFiles, CertFile: f.Str("certificateChain"), KeyFile: f.Str("privateKey")}
	} else {
		gl.TLS = &v1.GatewayTLS{Source: v1.CertSelfSigned, DNSNames: []string{"gateway.invalid"}}
		c.rep.drop(cert, "the listener's certificate (ACM or SDS) is not carried: the listener serves a self-signed one for gateway.invalid until you set it", "tls: {certFile, keyFile} of the listener, or source: mesh with dnsNames")
	}
	if v := t.Get("validation"); v != nil {
		c.rep.drop(v, "client certificate validation at the gateway is not carried", "not supported")
	}
}

// gatewayRoute maps one gateway route; port is its match.port (0: any).
func (c *conv) gatewayRoute(gr *Object) (v1.GatewayRoute, int, bool) {
	spec := gr.Spec
	spec.Int("priority")
	kind, b := routeBody(spec)
	if b == nil || kind == "tcpRoute" {
		c.rep.drop(spec, "a gateway route that is not http, http2 or grpc is not carried", "a tls-passthrough listener")
		return v1.GatewayRoute{}, 0, false
	}
	target := ref(b.At("action.target.virtualService"), "virtualService")
	svc, ok := c.vsByRef[target]
	if !ok {
		c.rep.drop(b.Get("action"), fmt.Sprintf("virtual service %s is not in the input", target), "a Service")
		return v1.GatewayRoute{}, 0, false
	}
	r := v1.GatewayRoute{Service: svc}
	if tp := b.At("action.target.port"); tp != nil {
		c.rep.note(tp, "the target port: the gateway calls the service's one port")
	}
	m := b.Get("match")
	port, _ := m.Int("port")
	if h := m.Get("hostname"); h != nil {
		if e := h.Str("exact"); e != "" {
			r.Host = strings.ToLower(e)
		}
		if s := h.Get("suffix"); s != nil {
			r.Host = "*." + strings.TrimPrefix(strings.ToLower(s.Value), ".")
			c.rep.note(s, "a hostname suffix is carried as host "+r.Host+", which matches one label only")
		}
	}
	if kind == "grpcRoute" {
		if sn := m.Str("serviceName"); sn != "" {
			r.PathPrefix = "/" + sn + "/"
		}
		if md := m.Get("metadata"); md != nil {
			c.rep.drop(md, "metadata matches of a gateway route are not carried", "a Route of the service (rules[].match.headers)")
		}
		return r, port, true
	}
	prefix := m.Str("prefix")
	if p := m.Get("path"); p != nil {
		c.rep.drop(p, "path matches of a gateway route are not carried", "pathPrefix, or a Route of the service (match.pathExact)")
	}
	for _, k := range []string{"headers", "method"} {
		if v := m.Get(k); v != nil {
			c.rep.drop(v, k+" matches of a gateway route are not carried", "a Route of the service (rules[].match)")
		}
	}
	if prefix != "" && prefix != "/" {
		r.PathPrefix = prefix
		if !strings.HasSuffix(prefix, "/") {
			c.rep.note(m.Get("prefix"), "Trellis matches whole path segments: "+prefix+" matches "+prefix+" and "+prefix+"/x, not "+prefix+"x")
		}
	}
	// App Mesh rewrites the matched prefix to / unless told otherwise.
	rw := b.At("action.rewrite")
	switch {
	case strings.EqualFold(rw.Str("prefix.defaultPrefix"), "DISABLED"):
		rw.Str("prefix.value")
	case rw.Str("prefix.value") != "":
		r.RewritePrefix = rw.Str("prefix.value")
	case r.PathPrefix != "":
		r.RewritePrefix = "/"
	}
	if r.PathPrefix == "" {
		r.RewritePrefix = ""
	}
	if h := rw.Get("hostname"); h != nil {
		if strings.EqualFold(h.Str("defaultTargetHostname"), "DISABLED") {
			h.Use()
		} else {
			c.rep.drop(h, "rewriting the Host to the virtual service's name is not carried: the service sees the client's Host", "not supported")
		}
	} else if spec != nil {
		// App Mesh's default rewrites the Host too; say so once per route.
		c.rep.add(b.Get("action"), LevelNote, "App Mesh sets the Host to the virtual service's name by default; the Trellis gateway passes the client's Host on", "")
	}
	if p := rw.Get("path"); p != nil {
		c.rep.drop(p, "an exact path rewrite is not carried", "rewritePrefix")
	}
	return r, port, true
}
