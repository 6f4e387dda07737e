package inject

import (
	"fmt"
	"io"
	"maps"
	"net"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/identity"
)

// Sidecar defaults, where the policy leaves a field empty.
const (
	DefaultUID              = 1337
	DefaultPublicPort       = 15443
	DefaultAdminPort        = 15000
	DefaultIngressPort      = 15006
	DefaultEgressPort       = 15001
	DefaultUpstreamPortBase = 15100
	DefaultSidecarCPU       = 64
	DefaultSidecarMemory    = 128
	// DefaultDNSPort is the sidecar's DNS listener on 127.0.0.1 where
	// redirect rules send the app's queries.
	DefaultDNSPort = 15053
	// DefaultHostUser and DefaultNetwork are the plain host's proxy user
	// and network.
	DefaultHostUser = "trellis-proxy"
	DefaultNetwork  = "default"
	// DefaultKubernetesTokenSecret holds a service's token (key "token").
	DefaultKubernetesTokenSecret = "trellis-{{service}}-token"
	DefaultClusterDomain         = "cluster.local"
	// SidecarName is the injected container's name everywhere.
	SidecarName = "trellis-proxy"
)

// Input is what Load reads.
type Input struct {
	ManifestFile string
	Manifest     io.Reader
	PolicyFile   string
	Policy       io.Reader
	// Version labels this deployment, such as the commit's first 8
	// characters; the service version runs as <service>-<version>.
	Version string
	// Env selects one of the manifest's Environments; "" for none.
	Env string
}

// Plan is a manifest resolved against a policy: everything an output
// format needs, every value decided and checked.
type Plan struct {
	Service    string // the mesh service: Task.Family
	Version    string
	Name       string // <service>-<version>
	LaunchType string
	Cpu        int
	Memory     int
	App        AppContainer // Environment merged with the environment's
	Protocol   string       // VirtualNode.Protocol, default http
	Backends   []Backend
	Policy     PolicySpec // with the sidecar defaults applied
}

// Backend is an allowed upstream and its local listener port.
type Backend struct {
	Service string
	Port    int
}

var versionRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$`)

// ValidVersion checks a version label: lowercase letters, digits and
// hyphens, up to 40 characters, so that <service>-<version> is a valid
// name on every platform.
func ValidVersion(v string) error {
	if !versionRE.MatchString(v) {
		return fmt.Errorf("version %q: want 1-40 lowercase letters, digits or hyphens (such as the commit's first 8 characters)", v)
	}
	return nil
}

// Load reads and checks the manifest and the policy and resolves them into
// a Plan. It returns every problem found in either file, sorted; the Plan
// is nil unless there are none.
func Load(in Input) (*Plan, Diagnostics) {
	var m Manifest
	var pol Policy
	msrc, ds := decode(in.ManifestFile, in.Manifest, &m)
	psrc, pds := decode(in.PolicyFile, in.Policy, &pol)
	ds = append(ds, pds...)
	if msrc == nil || psrc == nil {
		return nil, ds.sorted()
	}
	v := &checker{m: msrc, p: psrc, ds: ds}
	spec := v.policy(&pol)
	plan := v.manifest(&m, spec, in)
	if len(v.ds) > 0 {
		return nil, v.ds.sorted()
	}
	return plan, nil
}

// LoadPolicy reads and checks a policy alone, for inputs that are not a
// manifest (Kubernetes objects, the webhook). It returns the spec with
// defaults applied, or every problem found.
func LoadPolicy(file string, r io.Reader) (PolicySpec, Diagnostics) {
	var pol Policy
	psrc, ds := decode(file, r, &pol)
	if psrc == nil {
		return PolicySpec{}, ds.sorted()
	}
	c := &checker{p: psrc, ds: ds}
	spec := c.policy(&pol)
	if spec.DNS.Enabled && spec.DNS.Upstream == "" {
		// Here the policy serves Kubernetes alone, where the pod's resolver
		// is the sidecar: refused at start, not pod by pod.
		c.bad(psrc, "spec.dns", "the cluster's DNS Service (kubectl -n kube-system get service kube-dns), such as upstream: 10.96.0.10:53",
			"upstream missing: with mesh DNS on Kubernetes the sidecar forwards other names there")
	}
	if len(c.ds) > 0 {
		return PolicySpec{}, c.ds.sorted()
	}
	return spec, nil
}

// checker collects diagnostics against the two sources.
type checker struct {
	m, p *source
	ds   Diagnostics
}

func (c *checker) bad(src *source, path, hint, format string, args ...any) {
	c.ds = append(c.ds, src.diag(path, hint, format, args...))
}

// violation is a manifest field that breaks a policy rule: it points at
// the manifest and names the rule and where the policy says it.
func (c *checker) violation(path, rule, format string, args ...any) {
	d := c.m.diag(path, "", format, args...)
	line, _ := c.p.at(rule)
	d.Rule = fmt.Sprintf("%s (%s:%d)", rule, c.p.file, line)
	c.ds = append(c.ds, d)
}

// policy checks the policy and returns its spec with defaults applied.
func (c *checker) policy(pol *Policy) PolicySpec {
	p := c.p
	if pol.Kind != PolicyKind {
		c.bad(p, "kind", "", "is %q, want %s", pol.Kind, PolicyKind)
	}
	if pol.Name == "" {
		c.bad(p, "name", "", "missing")
	}
	s := pol.Spec
	switch s.LaunchType.Value {
	case "FARGATE", "EC2":
	case "":
		c.bad(p, "spec.launchType.value", "give FARGATE (enforce: true to require it) or EC2", "missing")
	default:
		c.bad(p, "spec.launchType.value", "", "%q is not FARGATE or EC2", s.LaunchType.Value)
	}
	for _, f := range []struct {
		path string
		v    string
	}{{"spec.cluster", s.Cluster}, {"spec.executionRoleArn", s.ExecutionRoleArn}, {"spec.taskRoleArn", s.TaskRoleArn}} {
		if f.v == "" {
			c.bad(p, f.path, "", "missing")
		} else if f.path != "spec.cluster" && !strings.HasPrefix(f.v, "arn:") {
			c.bad(p, f.path, "", "%q is not an ARN", f.v)
		}
	}
	if len(s.Subnets) == 0 {
		c.bad(p, "spec.subnets", "awsvpc services need at least one subnet", "missing")
	}
	for name, b := range map[string]Bounds{"spec.cpu": s.Cpu, "spec.memory": s.Memory} {
		if b.Min <= 0 || b.Max < b.Min || b.Default < b.Min || b.Default > b.Max {
			c.bad(p, name, "", "want 0 < min <= default <= max, have min %d, default %d, max %d", b.Min, b.Default, b.Max)
		}
	}

	sc := &s.Sidecar
	if sc.Image == "" {
		c.bad(p, "spec.sidecar.image", "", "missing")
	} else if !pinned(sc.Image) {
		c.bad(p, "spec.sidecar.image", "pin it by digest (@sha256:...) or by an exact version tag", "%q is not pinned", sc.Image)
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&sc.UID, DefaultUID)
	def(&sc.PublicPort, DefaultPublicPort)
	def(&sc.AdminPort, DefaultAdminPort)
	def(&sc.IngressPort, DefaultIngressPort)
	def(&sc.EgressPort, DefaultEgressPort)
	def(&sc.UpstreamPortBase, DefaultUpstreamPortBase)
	def(&sc.Cpu, DefaultSidecarCPU)
	def(&sc.Memory, DefaultSidecarMemory)
	if sc.UID < 1 || sc.UID > 65535 {
		c.bad(p, "spec.sidecar.uid", "", "%d is not a UID in 1-65535 (the proxy never runs as root)", sc.UID)
	}
	seen := map[int]string{}
	for _, f := range sidecarPorts(*sc) {
		if f.port < 1 || f.port > 65535 {
			c.bad(p, "spec.sidecar."+f.name, "", "%d is not a port", f.port)
		} else if other, dup := seen[f.port]; dup {
			c.bad(p, "spec.sidecar."+f.name, "", "%d is also %s", f.port, other)
		}
		seen[f.port] = f.name
	}

	cp := s.ControlPlane
	if _, port, err := net.SplitHostPort(cp.Addr); err != nil || port == "" {
		c.bad(p, "spec.controlPlane.addr", "", "%q is not host:port", cp.Addr)
	}
	if cp.CAFile == "" {
		c.bad(p, "spec.controlPlane.caFile", "the mesh's ca.pem inside the sidecar image", "missing")
	}
	if !strings.HasPrefix(cp.TokenSecret, "arn:") || !strings.Contains(cp.TokenSecret, "{{service}}") {
		c.bad(p, "spec.controlPlane.tokenSecret", "such as arn:aws:secretsmanager:REGION:ACCOUNT:secret:trellis/{{service}}", "%q is not an ARN naming {{service}}", cp.TokenSecret)
	}

	if ns := s.ServiceDiscovery.NamespaceID; ns != "" && !strings.HasPrefix(ns, "ns-") {
		c.bad(p, "spec.serviceDiscovery.namespaceId", "a Cloud Map namespace id such as ns-0a1b2c3d4e5f6a7b8", "%q is not a namespace id", ns)
	}
	k := &s.Kubernetes
	if k.TokenSecret == "" {
		k.TokenSecret = DefaultKubernetesTokenSecret
	}
	if name := expand(k.TokenSecret, "svc", "v1"); !dnsLabel.MatchString(name) || unknownPlaceholder(k.TokenSecret) != "" {
		c.bad(p, "spec.kubernetes.tokenSecret", "a Secret name such as trellis-{{service}}-token", "%q is not a Secret name", k.TokenSecret)
	}
	if k.ClusterDomain == "" {
		k.ClusterDomain = DefaultClusterDomain
	}
	if !dnsName.MatchString(k.ClusterDomain) {
		c.bad(p, "spec.kubernetes.clusterDomain", "such as cluster.local", "%q is not a DNS domain", k.ClusterDomain)
	}

	c.dns(&s.DNS, sc)
	c.host(&s.Host)

	lg := s.Logging
	switch lg.Driver {
	case "awslogs":
		if lg.Region == "" {
			c.bad(p, "spec.logging.region", "", "missing: awslogs needs a region")
		}
		if lg.Group == "" {
			c.bad(p, "spec.logging.group", "such as /ecs/{{service}}", "missing")
		}
	case "json-file", "fluentd", "splunk", "syslog":
	case "":
		c.bad(p, "spec.logging.driver", "", "missing")
	default:
		c.bad(p, "spec.logging.driver", "", "%q is not awslogs, json-file, fluentd, splunk or syslog", lg.Driver)
	}
	for _, f := range []struct{ path, v string }{{"spec.logging.group", lg.Group}, {"spec.logging.streamPrefix", lg.StreamPrefix}} {
		if bad := unknownPlaceholder(f.v); bad != "" {
			c.bad(p, f.path, "the placeholders are {{service}} and {{version}}", "unknown placeholder %s", bad)
		}
	}
	sg := s.Scaling
	if sg.Min < 1 || sg.Max < sg.Min {
		c.bad(p, "spec.scaling", "", "want 1 <= min <= max, have min %d, max %d", sg.Min, sg.Max)
	}
	if sg.CPUTarget < 1 || sg.CPUTarget > 100 {
		c.bad(p, "spec.scaling.cpuTarget", "", "%d is not a percentage in 1-100", sg.CPUTarget)
	}
	for i, r := range s.Registries {
		if r == "" || strings.Contains(r, "://") {
			c.bad(p, fmt.Sprintf("spec.registries[%d]", i), "a host such as 123456789012.dkr.ecr.eu-west-1.amazonaws.com", "%q is not a registry", r)
		}
	}
	return s
}

// dns checks the mesh DNS settings and applies their defaults.
func (c *checker) dns(d *DNSPolicy, sc *SidecarPolicy) {
	p := c.p
	if d.Port == 0 {
		d.Port = DefaultDNSPort
	}
	switch {
	case d.Port < 1 || d.Port > 65535:
		c.bad(p, "spec.dns.port", "", "%d is not a port", d.Port)
	case d.Port == 53:
		c.bad(p, "spec.dns.port", "such as 15053", "53 is the port redirect rules send queries from; the sidecar's must be another")
	default:
		for _, f := range sidecarPorts(*sc) {
			if f.port == d.Port {
				c.bad(p, "spec.dns.port", "", "%d is also spec.sidecar.%s", d.Port, f.name)
			}
		}
	}
	if d.Upstream != "" {
		host, port, err := net.SplitHostPort(d.Upstream)
		if _, perr := strconv.Atoi(port); err != nil || perr != nil || net.ParseIP(host) == nil {
			c.bad(p, "spec.dns.upstream", "an IP address and port, such as 10.96.0.10:53", "%q is not ip:port", d.Upstream)
		}
	}
}

var (
	hostUser = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	hexSHA   = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// host checks the plain-host settings and applies their defaults; what
// only the host output needs (binary, CA) is checked by it.
func (c *checker) host(h *HostPolicy) {
	p := c.p
	if h.User == "" {
		h.User = DefaultHostUser
	}
	if h.Network == "" {
		h.Network = DefaultNetwork
	}
	if !hostUser.MatchString(h.User) {
		c.bad(p, "spec.host.user", "lowercase letters, digits, _ and -, such as trellis-proxy", "%q is not a user name", h.User)
	}
	if !dnsLabel.MatchString(h.Network) {
		c.bad(p, "spec.host.network", "", "%q is not a network name (lowercase letters, digits and -)", h.Network)
	}
	if h.BinaryURL != "" && !strings.HasPrefix(h.BinaryURL, "https://") {
		c.bad(p, "spec.host.binaryURL", "the binary is fetched over https and checked against binarySHA256", "%q is not an https URL", h.BinaryURL)
	}
	if h.BinarySHA256 != "" && !hexSHA.MatchString(h.BinarySHA256) {
		c.bad(p, "spec.host.binarySHA256", "64 lowercase hex digits (sha256sum)", "%q is not a SHA-256", h.BinarySHA256)
	}
	if h.CAPEM != "" && !strings.Contains(h.CAPEM, "-----BEGIN CERTIFICATE-----") {
		c.bad(p, "spec.host.caPEM", "the mesh's root certificates (trellis ca roots)", "holds no PEM certificate")
	}
}

type namedPort struct {
	name string
	port int
}

func sidecarPorts(sc SidecarPolicy) []namedPort {
	ps := []namedPort{{"publicPort", sc.PublicPort}, {"adminPort", sc.AdminPort}}
	if sc.TransparentProxy {
		ps = append(ps, namedPort{"ingressPort", sc.IngressPort}, namedPort{"egressPort", sc.EgressPort})
	}
	return ps
}

// dnsLabel is a Kubernetes object name (RFC 1123 label).
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// dnsName is a DNS domain of RFC 1123 labels, without the final dot.
var dnsName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$`)

var placeholder = regexp.MustCompile(`\{\{[^}]*\}\}`)

func unknownPlaceholder(s string) string {
	for _, m := range placeholder.FindAllString(s, -1) {
		if m != "{{service}}" && m != "{{version}}" {
			return m
		}
	}
	return ""
}

// expand fills the {{service}} and {{version}} placeholders.
func expand(s, service, version string) string {
	return strings.NewReplacer("{{service}}", service, "{{version}}", version).Replace(s)
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// pinned: by digest, or by a tag that is neither missing nor latest.
func pinned(image string) bool {
	if _, digest, ok := strings.Cut(image, "@sha256:"); ok {
		return sha256Hex.MatchString(digest)
	}
	_, tag := splitImage(image)
	return tag != "" && tag != "latest"
}

// splitImage splits an image reference into its repository and tag ("" if
// none); a digest reference has no tag.
func splitImage(image string) (repo, tag string) {
	if i := strings.Index(image, "@"); i >= 0 {
		return image[:i], ""
	}
	slash := strings.LastIndex(image, "/")
	if colon := strings.LastIndex(image, ":"); colon > slash {
		return image[:colon], image[colon+1:]
	}
	return image, ""
}

// registry is the host an image comes from (Docker Hub when none).
func registry(image string) string {
	repo, _ := splitImage(image)
	first, _, found := strings.Cut(repo, "/")
	if found && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return first
	}
	return "docker.io"
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// manifest checks the manifest against the policy and resolves the Plan.
func (c *checker) manifest(m *Manifest, pol PolicySpec, in Input) *Plan {
	s := c.m
	plan := &Plan{Service: m.Task.Family, Version: in.Version, Policy: pol}
	if err := identity.ValidateServiceName(m.Task.Family); err != nil {
		c.bad(s, "Task.Family", "the family is the service's mesh name", "%v", err)
	}
	plan.Name = m.Task.Family + "-" + in.Version

	// Launch type: the policy's, unless it lets the manifest choose.
	plan.LaunchType = pol.LaunchType.Value
	switch lt := m.Task.LaunchType; {
	case lt == "":
	case lt != "FARGATE" && lt != "EC2":
		c.bad(s, "Task.LaunchType", "", "%q is not FARGATE or EC2", lt)
	case pol.LaunchType.Enforce && lt != pol.LaunchType.Value:
		c.violation("Task.LaunchType", "spec.launchType", "%s is not allowed: the platform enforces %s", lt, pol.LaunchType.Value)
	default:
		plan.LaunchType = lt
	}

	// Size: manifest, then environment, within the policy's bounds.
	plan.Cpu, plan.Memory = m.Task.Cpu, m.Task.Memory
	cpuAt, memAt := "Task.Cpu", "Task.Memory"
	env := maps.Clone(m.AppContainer.Environment)
	if in.Env != "" {
		o, ok := m.Environments[in.Env]
		if !ok {
			names := slices.Sorted(maps.Keys(m.Environments))
			c.bad(s, "Environments", fmt.Sprintf("the manifest has %v", names), "no environment %q", in.Env)
		}
		at := "Environments." + in.Env
		if o.Cpu != 0 {
			plan.Cpu, cpuAt = o.Cpu, at+".Cpu"
		}
		if o.Memory != 0 {
			plan.Memory, memAt = o.Memory, at+".Memory"
		}
		if env == nil && len(o.Environment) > 0 {
			env = map[string]string{}
		}
		maps.Copy(env, o.Environment)
	}
	if plan.Cpu == 0 {
		plan.Cpu = pol.Cpu.Default
	} else if plan.Cpu < pol.Cpu.Min || plan.Cpu > pol.Cpu.Max {
		c.violation(cpuAt, "spec.cpu", "%d CPU units is outside the allowed %d-%d", plan.Cpu, pol.Cpu.Min, pol.Cpu.Max)
	}
	if plan.Memory == 0 {
		plan.Memory = pol.Memory.Default
	} else if plan.Memory < pol.Memory.Min || plan.Memory > pol.Memory.Max {
		c.violation(memAt, "spec.memory", "%d MiB is outside the allowed %d-%d", plan.Memory, pol.Memory.Min, pol.Memory.Max)
	}
	if plan.LaunchType == "FARGATE" {
		if hint := fargateSize(plan.Cpu, plan.Memory); hint != "" {
			c.bad(s, memAt, hint, "Fargate has no task size of %d CPU units with %d MiB", plan.Cpu, plan.Memory)
		}
	}
	if plan.Cpu <= pol.Sidecar.Cpu || plan.Memory <= pol.Sidecar.Memory {
		c.bad(s, cpuAt, "", "the task (%d CPU, %d MiB) leaves nothing for the app beside the sidecar (%d CPU, %d MiB)", plan.Cpu, plan.Memory, pol.Sidecar.Cpu, pol.Sidecar.Memory)
	}

	// The app container.
	app := m.AppContainer
	app.Environment = env
	plan.App = app
	switch {
	case app.Image == "":
		c.bad(s, "AppContainer.Image", "", "missing")
	default:
		if reg := registry(app.Image); len(pol.Registries) > 0 && !allowedRegistry(app.Image, pol.Registries) {
			c.violation("AppContainer.Image", "spec.registries", "images from %s are not allowed (allowed: %s)", reg, strings.Join(pol.Registries, ", "))
		}
		if _, tag := splitImage(app.Image); pol.ForbidLatest && !strings.Contains(app.Image, "@") && (tag == "" || tag == "latest") {
			c.violation("AppContainer.Image", "spec.forbidLatest", "%q is not pinned: tag it with a version or pin it by digest", app.Image)
		}
	}
	if app.Port < 1 || app.Port > 65535 {
		c.bad(s, "AppContainer.Port", "", "%d is not a port in 1-65535", app.Port)
	}
	if app.HealthCheckPath != "" && !strings.HasPrefix(app.HealthCheckPath, "/") {
		c.bad(s, "AppContainer.HealthCheckPath", "", "%q must start with /", app.HealthCheckPath)
	}
	for _, k := range slices.Sorted(maps.Keys(app.Environment)) {
		at := "AppContainer.Environment." + k
		switch {
		case !envName.MatchString(k):
			c.bad(s, at, "", "%q is not an environment variable name", k)
		case strings.HasPrefix(k, "TRELLIS_") || strings.HasPrefix(k, "UPSTREAM_"):
			c.bad(s, at, "TRELLIS_ and UPSTREAM_ variables are set by the injection", "%s is reserved", k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(app.Secrets)) {
		at := "AppContainer.Secrets." + k
		if !envName.MatchString(k) {
			c.bad(s, at, "", "%q is not an environment variable name", k)
		}
		if v := app.Secrets[k]; !strings.HasPrefix(v, "arn:aws:secretsmanager:") && !strings.HasPrefix(v, "arn:aws:ssm:") {
			c.bad(s, at, "a secret is referenced by its ARN, never given by value", "not a Secrets Manager or SSM parameter ARN (the value is not repeated here)")
		}
		if _, dup := app.Environment[k]; dup {
			c.bad(s, at, "", "%s is also a plain environment variable", k)
		}
	}

	switch plan.Protocol = m.VirtualNode.Protocol; plan.Protocol {
	case "":
		plan.Protocol = v1.ProtocolHTTP
	case v1.ProtocolHTTP, v1.ProtocolHTTP2, v1.ProtocolGRPC, v1.ProtocolTCP:
	default:
		c.bad(s, "VirtualNode.Protocol", "http, http2, grpc or tcp", "%q is not a protocol", plan.Protocol)
	}

	// Backends: each gets an upstream listener; none may collide.
	seen := map[string]bool{}
	for i, b := range m.VirtualNode.Backends {
		at := fmt.Sprintf("VirtualNode.Backends[%d]", i)
		if err := identity.ValidateServiceName(b); err != nil {
			c.bad(s, at, "", "%v", err)
			continue
		}
		if b == m.Task.Family {
			c.bad(s, at, "", "a service does not list itself as a backend")
		}
		if seen[b] {
			c.bad(s, at, "", "%s is listed twice", b)
		}
		seen[b] = true
		plan.Backends = append(plan.Backends, Backend{Service: b})
	}
	// Ports follow the sorted names, so that reordering the list in the
	// manifest changes nothing.
	sort.Slice(plan.Backends, func(i, j int) bool { return plan.Backends[i].Service < plan.Backends[j].Service })
	for i := range plan.Backends {
		plan.Backends[i].Port = pol.Sidecar.UpstreamPortBase + i
	}
	if app.Port >= 1 {
		for _, f := range sidecarPorts(pol.Sidecar) {
			if f.port == app.Port {
				c.violation("AppContainer.Port", "spec.sidecar."+f.name, "%d is the sidecar's %s; pick another port", app.Port, f.name)
			}
		}
		if n := len(plan.Backends); n > 0 && app.Port >= pol.Sidecar.UpstreamPortBase && app.Port < pol.Sidecar.UpstreamPortBase+n {
			c.violation("AppContainer.Port", "spec.sidecar.upstreamPortBase", "%d is one of the sidecar's upstream listeners (%d-%d)", app.Port, pol.Sidecar.UpstreamPortBase, pol.Sidecar.UpstreamPortBase+n-1)
		}
	}
	return plan
}

func allowedRegistry(image string, allowed []string) bool {
	repo, _ := splitImage(image)
	reg := registry(image)
	for _, a := range allowed {
		a = strings.TrimSuffix(a, "/")
		if a == reg || strings.HasPrefix(repo, a+"/") {
			return true
		}
	}
	return false
}

// fargateSizes are Fargate's task sizes: CPU units and the memory range
// (MiB) and step each allows (AWS ECS developer guide, "Task CPU and
// memory").
var fargateSizes = []struct{ cpu, min, max, step int }{
	{256, 512, 2048, 512}, // 512, 1024, 2048 (1536 is not offered, see below)
	{512, 1024, 4096, 1024},
	{1024, 2048, 8192, 1024},
	{2048, 4096, 16384, 1024},
	{4096, 8192, 30720, 1024},
	{8192, 16384, 61440, 4096},
	{16384, 32768, 122880, 8192},
}

// fargateSize returns "" if Fargate offers cpu with memory, else a hint
// listing what it does offer.
func fargateSize(cpu, memory int) string {
	var cpus []string
	for _, s := range fargateSizes {
		cpus = append(cpus, strconv.Itoa(s.cpu))
		if s.cpu != cpu {
			continue
		}
		ok := memory >= s.min && memory <= s.max && (memory-s.min)%s.step == 0
		if s.cpu == 256 && memory == 1536 {
			ok = false
		}
		if ok {
			return ""
		}
		if s.cpu == 256 {
			return "with 256 CPU units Fargate offers 512, 1024 or 2048 MiB"
		}
		return fmt.Sprintf("with %d CPU units Fargate offers %d-%d MiB in steps of %d", s.cpu, s.min, s.max, s.step)
	}
	return "Fargate's CPU sizes are " + strings.Join(cpus, ", ")
}
