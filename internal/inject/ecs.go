package inject

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/redirect"
)

// The ECS output: the inputs of RegisterTaskDefinition and CreateService,
// in the JSON of the ECS API (what `aws ecs register-task-definition
// --cli-input-json` takes).

// ECS is both inputs.
type ECS struct {
	RegisterTaskDefinition TaskDefinition `json:"registerTaskDefinition"`
	CreateService          ECSService     `json:"createService"`
	// Notes say what the output could not do on ECS, for the reader.
	Notes []string `json:"notes,omitempty"`
}

type TaskDefinition struct {
	Family                  string                `json:"family"`
	TaskRoleArn             string                `json:"taskRoleArn"`
	ExecutionRoleArn        string                `json:"executionRoleArn"`
	NetworkMode             string                `json:"networkMode"`
	RequiresCompatibilities []string              `json:"requiresCompatibilities"`
	Cpu                     string                `json:"cpu"`
	Memory                  string                `json:"memory"`
	ContainerDefinitions    []ContainerDefinition `json:"containerDefinitions"`
	ProxyConfiguration      *ProxyConfiguration   `json:"proxyConfiguration,omitempty"`
	Tags                    []Tag                 `json:"tags,omitempty"`
}

type ContainerDefinition struct {
	Name              string             `json:"name"`
	Image             string             `json:"image"`
	Essential         bool               `json:"essential"`
	Cpu               int                `json:"cpu,omitempty"`
	MemoryReservation int                `json:"memoryReservation,omitempty"`
	Command           []string           `json:"command,omitempty"`
	User              string             `json:"user,omitempty"`
	PortMappings      []PortMapping      `json:"portMappings,omitempty"`
	Environment       []KeyValue         `json:"environment,omitempty"`
	Secrets           []Secret           `json:"secrets,omitempty"`
	DependsOn         []ContainerDepends `json:"dependsOn,omitempty"`
	HealthCheck       *HealthCheck       `json:"healthCheck,omitempty"`
	LogConfiguration  *LogConfiguration  `json:"logConfiguration,omitempty"`
	ReadonlyRootFS    bool               `json:"readonlyRootFilesystem,omitempty"`
	LinuxParameters   *LinuxParameters   `json:"linuxParameters,omitempty"`
}

type LinuxParameters struct {
	Capabilities *KernelCapabilities `json:"capabilities,omitempty"`
}

type KernelCapabilities struct {
	Add  []string `json:"add,omitempty"`
	Drop []string `json:"drop,omitempty"`
}

type PortMapping struct {
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	Name          string `json:"name,omitempty"`
}

type KeyValue struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type Secret struct {
	Name      string `json:"name"`
	ValueFrom string `json:"valueFrom"`
}

type ContainerDepends struct {
	ContainerName string `json:"containerName"`
	Condition     string `json:"condition"`
}

type HealthCheck struct {
	Command     []string `json:"command"`
	Interval    int      `json:"interval"`
	Timeout     int      `json:"timeout"`
	Retries     int      `json:"retries"`
	StartPeriod int      `json:"startPeriod"`
}

type LogConfiguration struct {
	LogDriver string            `json:"logDriver"`
	Options   map[string]string `json:"options,omitempty"`
}

type ProxyConfiguration struct {
	Type          string     `json:"type"`
	ContainerName string     `json:"containerName"`
	Properties    []KeyValue `json:"properties"`
}

type Tag struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type ECSService struct {
	Cluster                 string                  `json:"cluster"`
	ServiceName             string                  `json:"serviceName"`
	TaskDefinition          string                  `json:"taskDefinition"`
	DesiredCount            int                     `json:"desiredCount"`
	LaunchType              string                  `json:"launchType"`
	NetworkConfiguration    NetworkConfiguration    `json:"networkConfiguration"`
	DeploymentConfiguration DeploymentConfiguration `json:"deploymentConfiguration"`
	EnableECSManagedTags    bool                    `json:"enableECSManagedTags"`
	PropagateTags           string                  `json:"propagateTags"`
	Tags                    []Tag                   `json:"tags,omitempty"`
}

type NetworkConfiguration struct {
	AwsvpcConfiguration AwsvpcConfiguration `json:"awsvpcConfiguration"`
}

type AwsvpcConfiguration struct {
	Subnets        []string `json:"subnets"`
	SecurityGroups []string `json:"securityGroups,omitempty"`
	AssignPublicIp string   `json:"assignPublicIp"`
}

type DeploymentConfiguration struct {
	MaximumPercent        int                      `json:"maximumPercent"`
	MinimumHealthyPercent int                      `json:"minimumHealthyPercent"`
	CircuitBreaker        DeploymentCircuitBreaker `json:"deploymentCircuitBreaker"`
}

type DeploymentCircuitBreaker struct {
	Enable   bool `json:"enable"`
	Rollback bool `json:"rollback"`
}

// workload is what the sidecar must know of the app, whichever input
// described it: a manifest or a pod's annotations.
type workload struct {
	Service, Version string
	AppPort          int
	HealthPath       string
	Backends         []Backend
	// Transparent: redirect rules send the app's traffic through the
	// proxy, which the app calls at its backends' own names; else it calls
	// each at a local upstream listener.
	Transparent bool
	// DNSListen is the proxy's DNS listener (mesh DNS), "" for none;
	// DNSUpstream where it forwards other names, "" for the proxy's own
	// /etc/resolv.conf.
	DNSListen, DNSUpstream string
}

// workload is the app of the plan in explicit mode: compose and Kubernetes
// have nothing that installs redirect rules.
func (p *Plan) workload() workload {
	return workload{Service: p.Service, Version: p.Version, AppPort: p.App.Port, HealthPath: p.App.HealthCheckPath, Backends: p.Backends}
}

// ecsWorkload is the app in transparent mode where the policy asks for it:
// ECS installs the rules of the task definition's proxyConfiguration.
// With mesh DNS the proxy listens where a redirect rule can send the app's
// queries: awsvpc tasks take no dnsServers.
func (p *Plan) ecsWorkload() workload {
	w := p.workload()
	w.Transparent = p.Policy.Sidecar.TransparentProxy
	if p.Policy.DNS.Enabled {
		w.DNSListen, w.DNSUpstream = p.Policy.redirectedDNS(), p.Policy.DNS.Upstream
	}
	return w
}

// DNSRedirectName is the ECS container that installs the DNS rule.
const DNSRedirectName = "trellis-dns-redirect"

// ecsDNS is how an ECS task's app reaches the proxy's resolver: a
// container that installs the DNS redirect rule where the task may have
// NET_ADMIN (EC2 launch type) and the ECS agent redirects TCP already
// (transparent mode), or else only a note saying why not.
func (p *Plan) ecsDNS() (*ContainerDefinition, []string) {
	pol := p.Policy
	if !pol.DNS.Enabled {
		return nil, nil
	}
	listen := pol.redirectedDNS()
	const noDNSServers = "awsvpc task definitions take no dnsServers, so the task's resolver cannot be pointed at the sidecar"
	switch {
	case !pol.Sidecar.TransparentProxy:
		return nil, []string{fmt.Sprintf("mesh DNS: %s; with spec.sidecar.transparentProxy a redirect rule would send the app's queries to the sidecar. The sidecar answers at %s (the app's TRELLIS_DNS) for an app configured to ask it.", noDNSServers, listen)}
	case p.LaunchType != "EC2":
		return nil, []string{fmt.Sprintf("mesh DNS: %s, and Fargate grants no NET_ADMIN for the redirect rule. The sidecar answers at %s (the app's TRELLIS_DNS) for an app configured to ask it.", noDNSServers, listen)}
	}
	c := &ContainerDefinition{
		Name:      DNSRedirectName,
		Image:     pol.Sidecar.Image,
		Essential: false,
		Command: []string{"redirect", "--dns-only", "--dns-port", strconv.Itoa(pol.DNS.Port),
			"--proxy-uid", strconv.Itoa(pol.Sidecar.UID)},
		User: "0",
		// iptables needs these; the container exits once the rule is in.
		LinuxParameters:  &LinuxParameters{Capabilities: &KernelCapabilities{Add: []string{"NET_ADMIN", "NET_RAW"}, Drop: []string{"ALL"}}},
		LogConfiguration: p.logConfig("dns-redirect"),
		ReadonlyRootFS:   true,
	}
	return c, []string{fmt.Sprintf("mesh DNS: %s; the %s container installs a redirect rule sending the app's port-53 traffic to the sidecar at %s (trellis redirect --dns-only), and the app starts once it has.", noDNSServers, DNSRedirectName, listen)}
}

// proxyArgs is the proxy's command line, the same on every platform.
func proxyArgs(pol PolicySpec, w workload) []string {
	sc := pol.Sidecar
	args := []string{"proxy", "--service", w.Service}
	if w.Version != "" {
		args = append(args, "--version", w.Version)
	}
	args = append(args,
		"--app-port", strconv.Itoa(w.AppPort),
		"--public-addr", "0.0.0.0", "--public-port", strconv.Itoa(sc.PublicPort),
		"--advertise", "auto", // the task's own address (awsvpc) or the pod's
		"--admin-port", strconv.Itoa(sc.AdminPort),
		"--ca-file", pol.ControlPlane.CAFile,
	)
	if w.HealthPath != "" {
		args = append(args, "--health-path", w.HealthPath)
	}
	for _, b := range w.Backends {
		args = append(args, "--upstream", b.Service+":"+strconv.Itoa(b.Port))
	}
	if w.Transparent {
		args = append(args, "--ingress-port", strconv.Itoa(sc.IngressPort), "--egress-port", strconv.Itoa(sc.EgressPort))
	}
	if w.DNSListen != "" {
		args = append(args, "--dns-listen", w.DNSListen)
		if w.DNSUpstream != "" {
			args = append(args, "--dns-upstream", w.DNSUpstream)
		}
	}
	return args
}

// redirectedDNS is the proxy's DNS listener where redirect rules send the
// app's queries to it (hosts, ECS): an unprivileged port on 127.0.0.1.
func (pol PolicySpec) redirectedDNS() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(pol.DNS.Port))
}

// resolverDNS is the proxy's DNS listener where the app's resolv.conf
// names it (Kubernetes, compose): port 53, as resolv.conf has no port.
const resolverDNS = "127.0.0.1:53"

// unprivilegedPortStart is the sysctl that lets the proxy, not root and
// without capabilities, listen on port 53 in its network namespace.
const unprivilegedPortStart = "net.ipv4.ip_unprivileged_port_start"

// envSorted is the container's own environment, sorted by name.
func (a AppContainer) envSorted() []KeyValue {
	var out []KeyValue
	for _, k := range slices.Sorted(maps.Keys(a.Environment)) {
		out = append(out, KeyValue{Name: k, Value: a.Environment[k]})
	}
	return out
}

// secretsSorted is the container's secrets, sorted by name.
func (a AppContainer) secretsSorted() []Secret {
	var out []Secret
	for _, k := range slices.Sorted(maps.Keys(a.Secrets)) {
		out = append(out, Secret{Name: k, ValueFrom: a.Secrets[k]})
	}
	return out
}

// sidecarEnv is the proxy's environment (its token comes as a secret).
func (p *Plan) sidecarEnv() []KeyValue {
	return []KeyValue{{Name: "TRELLIS_ADDR", Value: p.Policy.ControlPlane.Addr}}
}

// appEnv is the app's environment: its own variables, then what the
// injection tells it, sorted.
func (p *Plan) appEnv(w workload) []KeyValue {
	env := maps.Clone(p.App.Environment)
	if env == nil {
		env = map[string]string{}
	}
	maps.Copy(env, meshEnv(w))
	var out []KeyValue
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, KeyValue{Name: k, Value: env[k]})
	}
	return out
}

// meshEnv is what the injection tells the app: its service and version,
// in explicit mode where each backend's local listener is, and with mesh
// DNS where the sidecar's resolver is (TRELLIS_DNS, for an app that can be
// pointed at it where the platform cannot).
func meshEnv(w workload) map[string]string {
	env := map[string]string{"TRELLIS_SERVICE": w.Service, "TRELLIS_VERSION": w.Version}
	if w.DNSListen != "" {
		env["TRELLIS_DNS"] = w.DNSListen
	}
	if !w.Transparent {
		for _, b := range w.Backends {
			env["UPSTREAM_"+identity.EnvName(b.Service)] = net.JoinHostPort("127.0.0.1", strconv.Itoa(b.Port))
		}
	}
	return env
}

// readyCommand is the sidecar's health check: the trellis binary asks its
// own admin endpoint, so the image needs no shell or curl.
func (p *Plan) readyCommand() []string { return readyCommand(p.Policy) }

func readyCommand(pol PolicySpec) []string {
	return []string{"/trellis", "ready", "--admin-port", strconv.Itoa(pol.Sidecar.AdminPort)}
}

func (p *Plan) tags() []Tag {
	return []Tag{{Key: "trellis:service", Value: p.Service}, {Key: "trellis:version", Value: p.Version}}
}

func (p *Plan) logConfig(container string) *LogConfiguration {
	lg := p.Policy.Logging
	opts := map[string]string{}
	switch lg.Driver {
	case "awslogs":
		opts["awslogs-group"] = expand(lg.Group, p.Service, p.Version)
		opts["awslogs-region"] = lg.Region
		opts["awslogs-create-group"] = "true"
		prefix := expand(lg.StreamPrefix, p.Service, p.Version)
		if prefix == "" {
			prefix = p.Name
		}
		opts["awslogs-stream-prefix"] = prefix + "-" + container
	default:
		if lg.Group != "" {
			opts["tag"] = expand(lg.Group, p.Service, p.Version) + "/" + container
		}
	}
	return &LogConfiguration{LogDriver: lg.Driver, Options: opts}
}

// ECS builds the ECS inputs of the plan.
func (p *Plan) ECS() *ECS {
	pol := p.Policy
	sc := pol.Sidecar
	w := p.ecsWorkload()
	app := ContainerDefinition{
		Name:         p.Service,
		Image:        p.App.Image,
		Essential:    true,
		Command:      p.App.Command,
		PortMappings: []PortMapping{{ContainerPort: p.App.Port, Protocol: "tcp", Name: "app"}},
		Environment:  p.appEnv(w),
		// The app starts once its proxy is ready: its first calls to
		// backends would fail before.
		DependsOn:        []ContainerDepends{{ContainerName: SidecarName, Condition: "HEALTHY"}},
		LogConfiguration: p.logConfig("app"),
	}
	app.Secrets = p.App.secretsSorted()
	proxy := ContainerDefinition{
		Name:              SidecarName,
		Image:             sc.Image,
		Essential:         true,
		Cpu:               sc.Cpu,
		MemoryReservation: sc.Memory,
		Command:           proxyArgs(p.Policy, w),
		User:              strconv.Itoa(sc.UID),
		PortMappings: []PortMapping{
			{ContainerPort: sc.PublicPort, Protocol: "tcp", Name: "mesh"},
		},
		Environment:      p.sidecarEnv(),
		Secrets:          []Secret{{Name: "TRELLIS_TOKEN", ValueFrom: expand(pol.ControlPlane.TokenSecret, p.Service, p.Version)}},
		HealthCheck:      &HealthCheck{Command: append([]string{"CMD"}, p.readyCommand()...), Interval: 5, Timeout: 2, Retries: 3, StartPeriod: 10},
		LogConfiguration: p.logConfig("proxy"),
		ReadonlyRootFS:   true,
	}
	dnsRedirect, notes := p.ecsDNS()
	containers := []ContainerDefinition{app, proxy}
	if dnsRedirect != nil {
		containers[0].DependsOn = append(containers[0].DependsOn, ContainerDepends{ContainerName: DNSRedirectName, Condition: "SUCCESS"})
		containers = append(containers, *dnsRedirect)
	}
	td := TaskDefinition{
		Family:                  p.Service,
		TaskRoleArn:             pol.TaskRoleArn,
		ExecutionRoleArn:        pol.ExecutionRoleArn,
		NetworkMode:             "awsvpc",
		RequiresCompatibilities: []string{p.LaunchType},
		Cpu:                     strconv.Itoa(p.Cpu),
		Memory:                  strconv.Itoa(p.Memory),
		ContainerDefinitions:    containers,
		Tags:                    p.tags(),
	}
	if sc.TransparentProxy {
		td.ProxyConfiguration = &ProxyConfiguration{
			Type:          "APPMESH",
			ContainerName: SidecarName,
			Properties: []KeyValue{
				{Name: "AppPorts", Value: strconv.Itoa(p.App.Port)},
				{Name: "EgressIgnoredIPs", Value: strings.Join(redirect.MetadataAddrs, ",")},
				{Name: "IgnoredUID", Value: strconv.Itoa(sc.UID)},
				{Name: "ProxyEgressPort", Value: strconv.Itoa(sc.EgressPort)},
				{Name: "ProxyIngressPort", Value: strconv.Itoa(sc.IngressPort)},
			},
		}
	}
	svc := ECSService{
		Cluster:        pol.Cluster,
		ServiceName:    p.Name,
		TaskDefinition: p.Service,
		DesiredCount:   pol.Scaling.Min,
		LaunchType:     p.LaunchType,
		NetworkConfiguration: NetworkConfiguration{AwsvpcConfiguration: AwsvpcConfiguration{
			Subnets: pol.Subnets, SecurityGroups: pol.SecurityGroups, AssignPublicIp: "DISABLED",
		}},
		DeploymentConfiguration: DeploymentConfiguration{
			MaximumPercent: 200, MinimumHealthyPercent: 100,
			CircuitBreaker: DeploymentCircuitBreaker{Enable: true, Rollback: true},
		},
		EnableECSManagedTags: true,
		PropagateTags:        "SERVICE",
		Tags:                 p.tags(),
	}
	return &ECS{RegisterTaskDefinition: td, CreateService: svc, Notes: notes}
}
