package inject

import (
	"errors"
	"maps"
	"slices"
	"strconv"
)

// Compose is a compose file (compose-spec) that runs the app and its
// sidecar on one machine, sharing one network namespace as they would in
// an ECS task or a pod, against a trellis server.
type Compose struct {
	Name     string                    `yaml:"name"`
	Services map[string]ComposeService `yaml:"services"`
}

type ComposeService struct {
	Image       string               `yaml:"image"`
	Command     []string             `yaml:"command,omitempty"`
	User        string               `yaml:"user,omitempty"`
	Environment map[string]string    `yaml:"environment,omitempty"`
	Ports       []string             `yaml:"ports,omitempty"`
	NetworkMode string               `yaml:"network_mode,omitempty"`
	DependsOn   map[string]DependsOn `yaml:"depends_on,omitempty"`
	Healthcheck *ComposeHealth       `yaml:"healthcheck,omitempty"`
	ExtraHosts  []string             `yaml:"extra_hosts,omitempty"`
	Volumes     []string             `yaml:"volumes,omitempty"`
	ReadOnly    bool                 `yaml:"read_only,omitempty"`
	Labels      map[string]string    `yaml:"labels,omitempty"`
	DNS         []string             `yaml:"dns,omitempty"`
	Sysctls     map[string]string    `yaml:"sysctls,omitempty"`
}

type DependsOn struct {
	Condition string `yaml:"condition"`
}

type ComposeHealth struct {
	Test        []string `yaml:"test"`
	Interval    string   `yaml:"interval"`
	Timeout     string   `yaml:"timeout"`
	Retries     int      `yaml:"retries"`
	StartPeriod string   `yaml:"start_period"`
}

// Compose builds the compose file. The sidecar owns the network namespace
// and publishes the mesh port; the app joins it (network_mode
// service:trellis-proxy) and starts once the sidecar is healthy. Secrets
// are the platform's, so the app gets their names as variables to fill
// and the sidecar reads its token from TRELLIS_TOKEN in the environment
// compose runs in.
//
// With mesh DNS the sidecar, which owns the namespace, gets dns:
// [127.0.0.1] (the app, joining its namespace, shares its resolver) and
// listens on 127.0.0.1:53, which the sysctl lets it do without root; it
// forwards other names to the policy's spec.dns.upstream, without which
// it would forward to itself.
func (p *Plan) Compose() (*Compose, error) {
	sc := p.Policy.Sidecar
	w := p.workload()
	if p.Policy.DNS.Enabled {
		if p.Policy.DNS.Upstream == "" {
			return nil, errors.New("policy spec.dns.upstream: missing: with mesh DNS on compose the containers' resolver is the sidecar, which needs a resolver to forward other names to, such as the host's")
		}
		w.DNSListen, w.DNSUpstream = resolverDNS, p.Policy.DNS.Upstream
	}
	env := map[string]string{}
	for _, kv := range p.appEnv(w) {
		env[kv.Name] = kv.Value
	}
	for _, k := range slices.Sorted(maps.Keys(p.App.Secrets)) {
		env[k] = "${" + k + ":?set " + k + " (a secret in production)}"
	}
	proxyEnv := map[string]string{"TRELLIS_TOKEN": "${TRELLIS_TOKEN:?a service token for " + p.Service + "}"}
	for _, kv := range p.sidecarEnv() {
		proxyEnv[kv.Name] = kv.Value
	}
	labels := map[string]string{"trellis.service": p.Service, "trellis.version": p.Version}
	c := &Compose{
		Name: p.Name,
		Services: map[string]ComposeService{
			SidecarName: {
				Image:       sc.Image,
				Command:     proxyArgs(p.Policy, w),
				User:        strconv.Itoa(sc.UID),
				Environment: proxyEnv,
				Ports:       []string{strconv.Itoa(sc.PublicPort) + ":" + strconv.Itoa(sc.PublicPort)},
				Healthcheck: &ComposeHealth{Test: append([]string{"CMD"}, p.readyCommand()...), Interval: "5s", Timeout: "2s", Retries: 3, StartPeriod: "10s"},
				// The control plane on the laptop is reached as host.docker.internal.
				ExtraHosts: []string{"host.docker.internal:host-gateway"},
				ReadOnly:   true,
				Labels:     labels,
			},
			"app": {
				Image:       p.App.Image,
				Command:     p.App.Command,
				Environment: env,
				NetworkMode: "service:" + SidecarName,
				DependsOn:   map[string]DependsOn{SidecarName: {Condition: "service_healthy"}},
				Labels:      labels,
			},
		},
	}
	if w.DNSListen != "" {
		proxy := c.Services[SidecarName]
		proxy.DNS = []string{"127.0.0.1"}
		proxy.Sysctls = map[string]string{unprivilegedPortStart: "53"}
		c.Services[SidecarName] = proxy
	}
	return c, nil
}
