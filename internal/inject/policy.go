package inject

// PolicyKind is the kind of the platform team's policy file.
const PolicyKind = "PlatformPolicy"

// Policy is owned by the platform team: what every service gets, what is
// enforced, and the bounds within which a manifest may choose.
type Policy struct {
	Kind string     `yaml:"kind"`
	Name string     `yaml:"name"`
	Spec PolicySpec `yaml:"spec"`
}

// PolicySpec is the policy itself.
type PolicySpec struct {
	// LaunchType is FARGATE or EC2. Enforced, a manifest cannot change it;
	// otherwise it is the default and a manifest may pick the other.
	LaunchType Choice `yaml:"launchType"`
	// Cluster, roles and network of the ECS services.
	Cluster          string   `yaml:"cluster"`
	TaskRoleArn      string   `yaml:"taskRoleArn"`
	ExecutionRoleArn string   `yaml:"executionRoleArn"`
	Subnets          []string `yaml:"subnets"`
	SecurityGroups   []string `yaml:"securityGroups"`
	// Cpu and Memory of tasks: a default and the bounds a manifest keeps to.
	Cpu    Bounds `yaml:"cpu"`
	Memory Bounds `yaml:"memory"`
	// Sidecar is the injected Trellis proxy.
	Sidecar SidecarPolicy `yaml:"sidecar"`
	// ControlPlane is where sidecars register.
	ControlPlane ControlPlane `yaml:"controlPlane"`
	// ServiceDiscovery is where versions register in Cloud Map
	// (CloudFormation output).
	ServiceDiscovery ServiceDiscovery `yaml:"serviceDiscovery"`
	// Kubernetes configures the Kubernetes output and webhook.
	Kubernetes KubernetesPolicy `yaml:"kubernetes"`
	// Logging of both containers.
	Logging Logging `yaml:"logging"`
	// Scaling of each service version.
	Scaling Scaling `yaml:"scaling"`
	// Registries the app image may come from (host, or host/path prefix);
	// empty allows any.
	Registries []string `yaml:"registries"`
	// ForbidLatest refuses app images tagged latest or not tagged at all.
	ForbidLatest bool `yaml:"forbidLatest"`

	// DNS is mesh DNS in the sidecar: a resolver for its app that answers
	// the mesh's names. Off by default.
	DNS DNSPolicy `yaml:"dns"`
	// Host configures the plain-host output (trellis inject systemd).
	Host HostPolicy `yaml:"host"`
}

// DNSPolicy turns on the sidecar's resolver and says how each platform
// points the app's resolver at it.
type DNSPolicy struct {
	// Enabled gives every sidecar a DNS listener (trellis proxy
	// --dns-listen) and points the app's resolver at it where the platform
	// allows: redirect rules on hosts and on ECS with the EC2 launch type in
	// transparent mode, the pod's dnsConfig on Kubernetes, the container's
	// dns on compose.
	Enabled bool `yaml:"enabled"`
	// Port of the listener on 127.0.0.1 where redirect rules send the
	// app's port-53 traffic (default 15053). Where the app's resolv.conf
	// names the sidecar (Kubernetes, compose) it listens on 127.0.0.1:53,
	// as resolv.conf takes no port.
	Port int `yaml:"port"`
	// Upstream is the resolver (host:port) the sidecar forwards other names
	// to where the app's resolv.conf names the sidecar, and so the
	// sidecar's too: on Kubernetes the cluster's DNS Service (such as
	// 10.96.0.10:53), on compose a resolver the host can reach. Elsewhere
	// the sidecar reads it from /etc/resolv.conf.
	Upstream string `yaml:"upstream"`
}

// HostPolicy is what a plain host (a VM) needs beyond the sidecar policy.
type HostPolicy struct {
	// User the proxy runs as, made with the sidecar's UID; default
	// trellis-proxy.
	User string `yaml:"user"`
	// Network the hosts are in (trellis proxy --network); default
	// "default".
	Network string `yaml:"network"`
	// BinaryURL is where user-data downloads the trellis binary from
	// (https), checked against BinarySHA256 (hex).
	BinaryURL    string `yaml:"binaryURL"`
	BinarySHA256 string `yaml:"binarySHA256"`
	// CAPEM is the mesh's root certificates (PEM), which user-data writes
	// to controlPlane.caFile.
	CAPEM string `yaml:"caPEM"`
}

// Choice is a value that is either enforced or a default.
type Choice struct {
	Value   string `yaml:"value"`
	Enforce bool   `yaml:"enforce"`
}

// Bounds is a default and the range a manifest may choose in.
type Bounds struct {
	Default int `yaml:"default"`
	Min     int `yaml:"min"`
	Max     int `yaml:"max"`
}

// SidecarPolicy configures the injected proxy.
type SidecarPolicy struct {
	// Image is pinned: by digest (@sha256:...) or an exact version tag.
	Image string `yaml:"image"`
	// UID the proxy runs as; transparent mode lets its traffic through
	// unredirected by this UID.
	UID int `yaml:"uid"`
	// PublicPort takes mesh (mTLS) traffic; AdminPort serves /ready and
	// /metrics; IngressPort and EgressPort are where transparent mode
	// redirects traffic; upstream listeners start at UpstreamPortBase.
	PublicPort       int `yaml:"publicPort"`
	AdminPort        int `yaml:"adminPort"`
	IngressPort      int `yaml:"ingressPort"`
	EgressPort       int `yaml:"egressPort"`
	UpstreamPortBase int `yaml:"upstreamPortBase"`
	// TransparentProxy adds ECS's proxyConfiguration: the ECS agent
	// redirects the task's traffic through the proxy's IngressPort and
	// EgressPort, and the app calls its backends at their own names.
	// Otherwise, and always on Kubernetes and compose, which have no agent
	// to install the rules, the app calls each backend at a local upstream
	// listener (UPSTREAM_<NAME>).
	TransparentProxy bool `yaml:"transparentProxy"`
	// Cpu and Memory reserved for the proxy within the task.
	Cpu    int `yaml:"cpu"`
	Memory int `yaml:"memory"`
}

// ControlPlane says how sidecars reach the Trellis servers.
type ControlPlane struct {
	Addr string `yaml:"addr"`
	// CAFile is the path of the mesh's root certificates inside the
	// sidecar image.
	CAFile string `yaml:"caFile"`
	// TokenSecret is the ARN of the secret holding a service's token; in
	// it {{service}} stands for the service name. A plain host reads it at
	// boot with its instance role.
	TokenSecret string `yaml:"tokenSecret"`
}

// Logging is a log driver and the naming of log groups and streams; in
// the templates {{service}} and {{version}} stand for the service and its
// version, as the seed's app-<service>-<commit> prefixes.
type Logging struct {
	Driver       string `yaml:"driver"`
	Group        string `yaml:"group"`
	StreamPrefix string `yaml:"streamPrefix"`
	Region       string `yaml:"region"`
}

// Scaling of a service version: task counts and the CPU target.
type Scaling struct {
	Min       int `yaml:"min"`
	Max       int `yaml:"max"`
	CPUTarget int `yaml:"cpuTarget"`
}

// ServiceDiscovery names the Cloud Map namespace (ns-...).
type ServiceDiscovery struct {
	NamespaceID string `yaml:"namespaceId"`
}

// KubernetesPolicy is what the Kubernetes injection needs beyond the
// sidecar: where a service's token lives, as a Secret in the pod's
// namespace ({{service}} stands for the service name).
type KubernetesPolicy struct {
	TokenSecret string `yaml:"tokenSecret"`
	// ClusterDomain is the cluster's DNS domain (default cluster.local):
	// with mesh DNS the pod's resolver is the sidecar, and the search path
	// keeps the cluster's short names working.
	ClusterDomain string `yaml:"clusterDomain"`
}
