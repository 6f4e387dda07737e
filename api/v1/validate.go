package v1

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// FieldError is a problem with one field. Path is the field's path in the
// document ("spec.protocol"); the YAML decoder adds the file and line.
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

func fieldErr(path, format string, args ...any) error {
	return &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// intentionName allows service names joined by dots, so that "src.dst" names
// (what `trellis intention` makes) cannot collide with a service name.
var intentionName = regexp.MustCompile(`^[a-z0-9*]([a-z0-9.*-]{0,251}[a-z0-9])?$`)

// Validate reports every problem with r at once, each a *FieldError.
func (r *Resource) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	specs := 0
	for _, set := range []bool{r.Mesh != nil, r.Service != nil, r.Intention != nil, r.Route != nil, r.Gateway != nil} {
		if set {
			specs++
		}
	}
	if specs > 1 {
		add(fieldErr("spec", "more than one spec is set"))
	}
	switch r.Kind {
	case KindMesh:
		if r.Name != MeshName {
			add(fieldErr("name", "the mesh must be named %q, not %q", MeshName, r.Name))
		}
		if r.Mesh == nil {
			r.Mesh = &MeshSpec{}
		}
		errs = append(errs, r.Mesh.validate()...)
	case KindService:
		if err := identity.ValidateServiceName(r.Name); err != nil {
			add(fieldErr("name", "%v", err))
		}
		if r.Service == nil {
			r.Service = &ServiceSpec{}
		}
		errs = append(errs, r.Service.validate()...)
	case KindIntention:
		if !intentionName.MatchString(r.Name) {
			add(fieldErr("name", "intention name %q must be lowercase letters, digits, '.', '-' or '*'", r.Name))
		}
		if r.Intention == nil {
			add(fieldErr("spec", "missing"))
			break
		}
		errs = append(errs, r.Intention.validate()...)
	case KindRoute:
		if err := identity.ValidateServiceName(r.Name); err != nil {
			add(fieldErr("name", "a Route is named after the service it routes: %v", err))
		}
		if r.Route == nil {
			add(fieldErr("spec", "missing"))
			break
		}
		errs = append(errs, r.Route.validate()...)
	case KindGateway:
		if err := identity.ValidateServiceName(r.Name); err != nil {
			add(fieldErr("name", "a Gateway is named after its identity, a service name: %v", err))
		}
		if r.Gateway == nil {
			add(fieldErr("spec", "missing"))
			break
		}
		errs = append(errs, r.Gateway.validate()...)
	case "":
		add(fieldErr("kind", "missing"))
	default:
		add(fieldErr("kind", "unknown kind %q (want one of %v)", r.Kind, Kinds))
	}
	return errors.Join(errs...)
}

func (m *MeshSpec) validate() []error {
	var errs []error
	if m.TrustDomain != "" {
		if err := identity.ValidateTrustDomain(m.TrustDomain); err != nil {
			errs = append(errs, fieldErr("spec.trustDomain", "%v", err))
		}
	}
	switch m.MTLS {
	case "", MTLSStrict, MTLSPermissive:
	default:
		errs = append(errs, fieldErr("spec.mtls", "%q is not %q or %q", m.MTLS, MTLSStrict, MTLSPermissive))
	}
	switch m.DefaultPolicy {
	case "", Allow, Deny:
	default:
		errs = append(errs, fieldErr("spec.defaultPolicy", "%q is not %q or %q", m.DefaultPolicy, Allow, Deny))
	}
	if m.DNS != nil {
		errs = append(errs, validMeshDNSNames("spec.dns.domains", m.DNS.Domains, maxMeshDomains)...)
	}
	return errs
}

func (s *ServiceSpec) validate() []error {
	var errs []error
	switch s.Protocol {
	case "", ProtocolTCP, ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC:
	default:
		errs = append(errs, fieldErr("spec.protocol", "%q is not one of tcp, http, http2, grpc", s.Protocol))
	}
	if s.Port < 0 || s.Port > 65535 {
		errs = append(errs, fieldErr("spec.port", "%d is not a port number", s.Port))
	}
	errs = append(errs, validEdgeNames("spec.dnsNames", s.DNSNames)...)
	errs = append(errs, validMeshDNSNames("spec.hostnames", s.Hostnames, maxServiceHostname)...)
	switch s.Locality {
	case "", LocalityPreferLocal, LocalityAny:
	default:
		errs = append(errs, fieldErr("spec.locality", "%q is not %q or %q", s.Locality, LocalityPreferLocal, LocalityAny))
	}
	if l := s.Limits; l != nil {
		for _, f := range []struct {
			name string
			v    int
		}{{"maxConnections", l.MaxConnections}, {"maxRequests", l.MaxRequests}, {"maxPendingRequests", l.MaxPendingRequests}} {
			if f.v < 0 || f.v > 1000000 {
				errs = append(errs, fieldErr("spec.limits."+f.name, "%d is not in 0..1000000 (0: no limit)", f.v))
			}
		}
		if l.MaxPendingRequests > 0 && l.MaxRequests == 0 {
			errs = append(errs, fieldErr("spec.limits.maxPendingRequests", "needs maxRequests: requests wait for one of those"))
		}
	}
	return errs
}

func (i *IntentionSpec) validate() []error {
	var errs []error
	if i.Source != "*" {
		if err := identity.ValidateServiceName(i.Source); err != nil {
			errs = append(errs, fieldErr("spec.source", "%v (or \"*\" for any)", err))
		}
	}
	if err := identity.ValidateServiceName(i.Destination); err != nil {
		errs = append(errs, fieldErr("spec.destination", "%v", err))
	}
	switch {
	case i.Action != "" && len(i.Permissions) > 0:
		errs = append(errs, fieldErr("spec.action", "set action or permissions, not both"))
	case i.Action == "" && len(i.Permissions) == 0:
		errs = append(errs, fieldErr("spec.action", "missing (allow or deny, or permissions)"))
	case i.Action != "" && i.Action != Allow && i.Action != Deny:
		errs = append(errs, fieldErr("spec.action", "%q is not %q or %q", i.Action, Allow, Deny))
	}
	for j, p := range i.Permissions {
		at := fmt.Sprintf("spec.permissions[%d]", j)
		if p.Action != Allow && p.Action != Deny {
			errs = append(errs, fieldErr(at+".action", "%q is not %q or %q", p.Action, Allow, Deny))
		}
		errs = append(errs, p.HTTP.validate(at+".http")...)
	}
	return errs
}

// maxRouteRules bounds a Route: rules are tried in order on every request.
const maxRouteRules = 100

func (r *RouteSpec) validate() []error {
	var errs []error
	if len(r.Rules) == 0 {
		errs = append(errs, fieldErr("spec.rules", "missing: a Route needs at least one rule"))
	}
	if len(r.Rules) > maxRouteRules {
		errs = append(errs, fieldErr("spec.rules", "%d rules, at most %d", len(r.Rules), maxRouteRules))
	}
	names := map[string]bool{}
	canaries := 0
	for i := range r.Rules {
		rule := &r.Rules[i]
		at := fmt.Sprintf("spec.rules[%d]", i)
		if rule.Name != "" {
			if !ruleName.MatchString(rule.Name) {
				errs = append(errs, fieldErr(at+".name", "%q must be lowercase letters, digits and '-'", rule.Name))
			}
			if names[rule.Name] {
				errs = append(errs, fieldErr(at+".name", "%q names two rules", rule.Name))
			}
			names[rule.Name] = true
		}
		errs = append(errs, rule.Match.validate(at+".match")...)
		total := 0
		versions := map[string]bool{}
		for j, t := range rule.Targets {
			tat := fmt.Sprintf("%s.targets[%d]", at, j)
			if t.Version == "" {
				errs = append(errs, fieldErr(tat+".version", "missing"))
			} else if versions[t.Version] {
				errs = append(errs, fieldErr(tat+".version", "%q is listed twice", t.Version))
			}
			versions[t.Version] = true
			if t.Weight < 0 || t.Weight > 10000 {
				errs = append(errs, fieldErr(tat+".weight", "%d is not in 0..10000", t.Weight))
			}
			total += t.Weight
		}
		if len(rule.Targets) > 0 && total == 0 {
			errs = append(errs, fieldErr(at+".targets", "all weights are 0: nothing would be served"))
		}
		if rule.Timeout != "" {
			if d, err := time.ParseDuration(rule.Timeout); err != nil || d <= 0 {
				errs = append(errs, fieldErr(at+".timeout", "%q is not a positive duration such as 2s or 500ms", rule.Timeout))
			}
		}
		if rule.PrefixRewrite != "" {
			if rule.Match.PathPrefix == "" {
				errs = append(errs, fieldErr(at+".prefixRewrite", "needs match.pathPrefix: it replaces that prefix"))
			}
			if !strings.HasPrefix(rule.PrefixRewrite, "/") {
				errs = append(errs, fieldErr(at+".prefixRewrite", "%q must start with /", rule.PrefixRewrite))
			}
		}
		if rule.Retries != nil {
			errs = append(errs, rule.Retries.validate(at+".retries")...)
		}
		if rule.Canary != nil {
			errs = append(errs, rule.Canary.validate(at+".canary", rule.Targets)...)
			canaries++
		}
	}
	if canaries > 1 {
		errs = append(errs, fieldErr("spec.rules", "%d rules have a canary, at most one may", canaries))
	}
	return errs
}

var ruleName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func (m *RouteMatch) validate(at string) []error {
	var errs []error
	paths := 0
	for _, p := range []struct{ field, v string }{{"pathPrefix", m.PathPrefix}, {"pathExact", m.PathExact}} {
		if p.v == "" {
			continue
		}
		paths++
		if err := matchablePath(p.v); err != nil {
			errs = append(errs, fieldErr(at+"."+p.field, "%q %v", p.v, err))
		}
	}
	if m.PathRegex != "" {
		paths++
		if re, err := regexp.Compile("^(?:" + m.PathRegex + ")$"); err != nil {
			errs = append(errs, fieldErr(at+".pathRegex", "%v", err))
		} else if prefix, _ := re.LiteralPrefix(); prefix != "" && !strings.HasPrefix(prefix, "/") {
			errs = append(errs, fieldErr(at+".pathRegex", "%q can never match: it must match the whole path, which starts with /", m.PathRegex))
		}
	}
	if paths > 1 {
		errs = append(errs, fieldErr(at, "set at most one of pathPrefix, pathExact, pathRegex"))
	}
	for i, meth := range m.Methods {
		if !slices.Contains(Methods, meth) {
			errs = append(errs, fieldErr(fmt.Sprintf("%s.methods[%d]", at, i),
				"%q can never match: the proxies refuse any method but %s (case-sensitive)", meth, strings.Join(Methods, ", ")))
		}
	}
	for i, h := range m.Headers {
		errs = append(errs, h.validate(fmt.Sprintf("%s.headers[%d]", at, i))...)
	}
	return errs
}

// Methods are the request methods the proxies pass on, in capitals:
// requests with any other method are refused before any rule sees them,
// so a match on another can never fit.
var Methods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"}

// unmatchableHeaders are fields a match would never see as the caller
// sent them: connection-specific ones, which never cross the proxies, and
// the peer header, which the proxy sets itself (match the caller by the
// intention's source instead).
var unmatchableHeaders = map[string]string{
	"connection":              "a connection-specific field never reaches the rules",
	"keep-alive":              "a connection-specific field never reaches the rules",
	"proxy-connection":        "a connection-specific field never reaches the rules",
	"transfer-encoding":       "a connection-specific field never reaches the rules",
	"upgrade":                 "a connection-specific field never reaches the rules",
	"x-forwarded-client-cert": "the proxy sets it; the intention's source names the caller",
}

func (h *HeaderMatch) validate(at string) []error {
	var errs []error
	name := strings.ToLower(h.Name)
	switch {
	case strings.HasPrefix(h.Name, ":"):
		errs = append(errs, fieldErr(at+".name", "%q is a pseudo-header: match the authority with name host, the path and method with pathPrefix, pathExact, pathRegex and methods", h.Name))
	case !httpToken.MatchString(h.Name):
		errs = append(errs, fieldErr(at+".name", "%q is not a header name", h.Name))
	case unmatchableHeaders[name] != "":
		errs = append(errs, fieldErr(at+".name", "%q can never match: %s", h.Name, unmatchableHeaders[name]))
	}
	set := 0
	for _, v := range []string{h.Exact, h.Prefix, h.Regex} {
		if v != "" {
			set++
		}
	}
	if set > 1 {
		errs = append(errs, fieldErr(at, "set at most one of exact, prefix, regex"))
	}
	if h.Regex != "" {
		if _, err := regexp.Compile(h.Regex); err != nil {
			errs = append(errs, fieldErr(at+".regex", "%v", err))
		}
	}
	sep := ","
	if name == "cookie" {
		sep = ";"
	}
	for _, f := range []struct{ field, v string }{{"exact", h.Exact}, {"prefix", h.Prefix}} {
		if f.v == "" {
			continue
		}
		fat := at + "." + f.field
		switch {
		case name == "host":
			if err := matchableHost(f.v, f.field == "prefix"); err != nil {
				errs = append(errs, fieldErr(fat, "%q can never match the request's host: %v", f.v, err))
			}
		case strings.Contains(f.v, sep):
			errs = append(errs, fieldErr(fat, "%q can never match: a header is matched element by element, split at %q", f.v, sep))
		case strings.TrimLeft(f.v, " \t") != f.v || f.field == "exact" && strings.TrimRight(f.v, " \t") != f.v:
			errs = append(errs, fieldErr(fat, "%q can never match: white space around an element is not part of it", f.v))
		case !printable(f.v):
			errs = append(errs, fieldErr(fat, "%q can never match: a control character cannot be in a header", f.v))
		}
	}
	return errs
}

// matchablePath checks a path pattern against what the proxies match:
// a normalized, decoded path (see the L7 proxy's path normalization).
func matchablePath(p string) error {
	switch {
	case !strings.HasPrefix(p, "/"):
		return errors.New("must start with /")
	case strings.Contains(p, "//"):
		return errors.New("can never match: paths are matched with repeated slashes merged")
	case strings.Contains(p+"/", "/./") || strings.Contains(p+"/", "/../"):
		return errors.New("can never match: paths are matched with dot segments resolved")
	case strings.ContainsAny(p, "?#"):
		return errors.New("holds a query or fragment, which are not part of the path a rule matches")
	case strings.ContainsRune(p, '\\'):
		return errors.New("can never match: requests with a backslash in the path are refused")
	case percentEncoded(p):
		return errors.New("is percent-encoded: paths are matched decoded, so write the character, not its encoding")
	case strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return errors.New("can never match: requests with control characters in the path are refused")
	}
	return nil
}

func percentEncoded(p string) bool {
	for i := 0; i+2 < len(p); i++ {
		if p[i] == '%' && isHex(p[i+1]) && isHex(p[i+2]) {
			return true
		}
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// matchableHost checks a host rule's value: a host name or address (any
// case, a trailing dot allowed) without port; for a prefix, a start of one.
func matchableHost(h string, prefix bool) error {
	if strings.HasPrefix(h, "*") {
		return errors.New("a wildcard is not a host; use regex for several hosts")
	}
	if strings.HasPrefix(h, "[") {
		if prefix {
			return nil
		}
		if end := strings.IndexByte(h, ']'); end == len(h)-1 {
			if ip, err := netip.ParseAddr(h[1:end]); err == nil && ip.Is6() && ip.Zone() == "" {
				return nil
			}
		}
		return errors.New("not an IPv6 address in brackets, without port or zone")
	}
	for i := 0; i < len(h); i++ {
		switch c := h[i]; {
		case c == ':':
			return errors.New("the port is not part of the match (hosts are matched without it)")
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		case c == '.':
			if i == 0 || h[i-1] == '.' {
				return errors.New("an empty label")
			}
		default:
			return fmt.Errorf("%q is not allowed in a host name", c)
		}
	}
	if len(strings.TrimSuffix(h, ".")) > 253 {
		return errors.New("longer than 253 characters")
	}
	return nil
}

// httpToken is RFC 9110's token: what methods and header names are made of.
var httpToken = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

func (p *RetryPolicy) validate(at string) []error {
	var errs []error
	if p.Attempts < 2 || p.Attempts > 10 {
		errs = append(errs, fieldErr(at+".attempts", "%d is not in 2..10 (tries in all, the first included)", p.Attempts))
	}
	if p.PerTryTimeout != "" {
		if d, err := time.ParseDuration(p.PerTryTimeout); err != nil || d <= 0 {
			errs = append(errs, fieldErr(at+".perTryTimeout", "%q is not a positive duration such as 500ms", p.PerTryTimeout))
		}
	}
	for i, on := range p.On {
		switch on {
		case RetryConnectFailure, RetryReset, Retry5xx, RetryGatewayError, RetryGRPC:
		default:
			errs = append(errs, fieldErr(fmt.Sprintf("%s.on[%d]", at, i), "%q is not one of %s, %s, %s, %s, %s",
				on, RetryConnectFailure, RetryReset, Retry5xx, RetryGatewayError, RetryGRPC))
		}
	}
	return errs
}

// EffectiveMTLS returns the mTLS mode with the default applied.
func (m *MeshSpec) EffectiveMTLS() string {
	if m == nil || m.MTLS == "" {
		return MTLSStrict
	}
	return m.MTLS
}

// EffectiveDefaultPolicy returns the default policy with the default applied.
func (m *MeshSpec) EffectiveDefaultPolicy() string {
	if m == nil || m.DefaultPolicy == "" {
		return Deny
	}
	return m.DefaultPolicy
}

// EffectiveProtocol returns the protocol with the default applied.
func (s *ServiceSpec) EffectiveProtocol() string {
	if s == nil || s.Protocol == "" {
		return ProtocolTCP
	}
	return s.Protocol
}

func (g *GatewaySpec) validate() []error {
	var errs []error
	if len(g.Listeners) == 0 {
		errs = append(errs, fieldErr("spec.listeners", "missing: a Gateway needs at least one listener"))
	}
	ports := map[int]bool{}
	for i, l := range g.Listeners {
		at := fmt.Sprintf("spec.listeners[%d]", i)
		if l.Port <= 0 || l.Port > 65535 {
			errs = append(errs, fieldErr(at+".port", "%d is not 1-65535", l.Port))
		} else if ports[l.Port] {
			errs = append(errs, fieldErr(at+".port", "%d is used by another listener", l.Port))
		}
		ports[l.Port] = true
		if l.DrainTimeout != "" {
			if d, err := time.ParseDuration(l.DrainTimeout); err != nil || d < 0 {
				errs = append(errs, fieldErr(at+".drainTimeout", "%q is not a duration such as 30s", l.DrainTimeout))
			}
		}
		switch l.Protocol {
		case GatewayHTTP, GatewayHTTPS:
			if l.Protocol == GatewayHTTPS {
				switch {
				case l.TLS == nil:
					errs = append(errs, fieldErr(at+".tls", "missing: an https listener needs certFile and keyFile, or dnsNames for a mesh-issued or self-signed certificate"))
				default:
					errs = append(errs, l.TLS.validate(at+".tls")...)
				}
			} else if l.TLS != nil {
				errs = append(errs, fieldErr(at+".tls", "an http listener has no certificate; use protocol https"))
			}
			if len(l.Routes) == 0 {
				errs = append(errs, fieldErr(at+".routes", "missing: an %s listener needs at least one route", l.Protocol))
			}
			if len(l.Targets) > 0 || l.DefaultService != "" || l.ProxyProtocol || l.HealthCheck != "" {
				errs = append(errs, fieldErr(at, "targets, defaultService, proxyProtocol and healthCheck are for tls-passthrough listeners"))
			}
			for j, r := range l.Routes {
				rat := fmt.Sprintf("%s.routes[%d]", at, j)
				if err := identity.ValidateServiceName(r.Service); err != nil {
					errs = append(errs, fieldErr(rat+".service", "%v", err))
				}
				if r.PathPrefix != "" {
					if err := matchablePath(r.PathPrefix); err != nil {
						errs = append(errs, fieldErr(rat+".pathPrefix", "%q %v", r.PathPrefix, err))
					}
				}
				if r.RewritePrefix != "" && !strings.HasPrefix(r.RewritePrefix, "/") {
					errs = append(errs, fieldErr(rat+".rewritePrefix", "%q must start with /", r.RewritePrefix))
				}
				if !validHostPattern(r.Host) {
					errs = append(errs, fieldErr(rat+".host", "%q is not a host name or *.domain", r.Host))
				}
			}
			for j, tp := range l.TrustedProxies {
				if _, err := ParseTrustedProxy(tp); err != nil {
					errs = append(errs, fieldErr(fmt.Sprintf("%s.trustedProxies[%d]", at, j), "%v", err))
				}
			}
		case GatewayTLSPassthrough:
			if len(l.TrustedProxies) > 0 {
				errs = append(errs, fieldErr(at+".trustedProxies", "a tls-passthrough listener reads no HTTP fields; use proxyProtocol to pass the client's address"))
			}
			if l.TLS != nil || len(l.Routes) > 0 {
				errs = append(errs, fieldErr(at, "a tls-passthrough listener holds no certificate and has targets, not routes"))
			}
			if len(l.Targets) == 0 && l.DefaultService == "" {
				errs = append(errs, fieldErr(at+".targets", "missing: give targets or a defaultService"))
			}
			if l.HealthCheck != "" && l.HealthCheck != "tcp" && l.HealthCheck != "tls" {
				errs = append(errs, fieldErr(at+".healthCheck", "%q is not tcp or tls", l.HealthCheck))
			}
			snis := map[string]bool{}
			for j, t := range l.Targets {
				tat := fmt.Sprintf("%s.targets[%d]", at, j)
				if t.SNI == "" || !validHostPattern(t.SNI) {
					errs = append(errs, fieldErr(tat+".sni", "%q is not a host name or *.domain", t.SNI))
				}
				if snis[strings.ToLower(t.SNI)] {
					errs = append(errs, fieldErr(tat+".sni", "%q is routed twice", t.SNI))
				}
				snis[strings.ToLower(t.SNI)] = true
				if err := identity.ValidateServiceName(t.Service); err != nil {
					errs = append(errs, fieldErr(tat+".service", "%v", err))
				}
			}
			if l.DefaultService != "" {
				if err := identity.ValidateServiceName(l.DefaultService); err != nil {
					errs = append(errs, fieldErr(at+".defaultService", "%v", err))
				}
			}
		case GatewayNetwork:
			if l.Network == "" {
				errs = append(errs, fieldErr(at+".network", "missing: a network listener names the network whose instances it exposes"))
			} else if err := ValidateNetworkName(l.Network); err != nil {
				errs = append(errs, fieldErr(at+".network", "%v", err))
			}
			if l.TLS != nil || len(l.Routes) > 0 || len(l.Targets) > 0 || l.DefaultService != "" || l.ProxyProtocol || l.HealthCheck != "" || len(l.TrustedProxies) > 0 {
				errs = append(errs, fieldErr(at, "a network listener holds no certificate and routes by the instance its SNI names: no tls, routes, targets, defaultService, proxyProtocol, healthCheck or trustedProxies"))
			}
		default:
			errs = append(errs, fieldErr(at+".protocol", "%q is not http, https, tls-passthrough or network", l.Protocol))
		}
		if l.Protocol != GatewayNetwork && l.Network != "" {
			errs = append(errs, fieldErr(at+".network", "only a network listener has a network"))
		}
	}
	return errs
}

// ValidateNetworkName checks a network name: a DNS label (1-63 of a-z,
// 0-9 and -, not starting or ending with -).
func ValidateNetworkName(name string) error {
	switch {
	case name == "":
		return errors.New("network name is empty")
	case len(name) > 63:
		return fmt.Errorf("network name %q is longer than 63 characters", name)
	case name[0] == '-' || name[len(name)-1] == '-':
		return fmt.Errorf("network name %q must not start or end with a hyphen", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("network name %q: %q is not allowed (use a-z, 0-9 and -)", name, c)
		}
	}
	return nil
}

// validHostPattern accepts "", a DNS name, or "*." and a DNS name.
func (t *GatewayTLS) validate(at string) []error {
	var errs []error
	switch t.EffectiveSource() {
	case CertFiles:
		if t.CertFile == "" || t.KeyFile == "" {
			errs = append(errs, fieldErr(at, "certFile and keyFile go together"))
		}
		if len(t.DNSNames) > 0 {
			errs = append(errs, fieldErr(at+".dnsNames", "the names come from the certificate file; dnsNames are for source mesh or self-signed"))
		}
	case CertMesh, CertSelfSigned:
		if t.CertFile != "" || t.KeyFile != "" {
			errs = append(errs, fieldErr(at, "certFile and keyFile are for source files"))
		}
		if len(t.DNSNames) == 0 {
			errs = append(errs, fieldErr(at+".dnsNames", "missing: source %s needs the names to put in the certificate", t.EffectiveSource()))
		}
		if t.EffectiveSource() == CertMesh {
			errs = append(errs, validEdgeNames(at+".dnsNames", t.DNSNames)...)
		} else {
			errs = append(errs, validDNSNames(at+".dnsNames", t.DNSNames)...)
		}
	default:
		errs = append(errs, fieldErr(at+".source", "%q is not files, mesh or self-signed", t.Source))
	}
	return errs
}

// validEdgeNames checks names the mesh CA is to sign.
func validEdgeNames(at string, names []string) []error {
	var errs []error
	for i, n := range names {
		if err := ValidateEdgeName(n); err != nil {
			errs = append(errs, fieldErr(fmt.Sprintf("%s[%d]", at, i), "%v", err))
		}
	}
	return errs
}

// validDNSNames checks names for certificates: host names, or *.domain.
func validDNSNames(at string, names []string) []error {
	var errs []error
	for i, n := range names {
		if n == "" || !validHostPattern(n) {
			errs = append(errs, fieldErr(fmt.Sprintf("%s[%d]", at, i), "%q is not a DNS name or *.domain", n))
		}
	}
	return errs
}

func validHostPattern(h string) bool {
	h = strings.TrimPrefix(h, "*.")
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if h == "" {
			return true
		}
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
