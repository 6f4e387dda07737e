package inject

// Manifest is what an application team writes for one service, with the
// PascalCase keys of the delivery-pipeline seed:
//
//	Task:
//	  Family: hello-web
//	  Cpu: 256
//	  Memory: 512
//	AppContainer:
//	  Image: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/hello-web:1.4.2
//	  Port: 8080
//	  HealthCheckPath: /health
//	  Command: [/hello-web]
//	VirtualNode:
//	  Backends: [hello-backend]
type Manifest struct {
	Task         Task         `yaml:"Task" json:"Task"`
	AppContainer AppContainer `yaml:"AppContainer" json:"AppContainer"`
	VirtualNode  VirtualNode  `yaml:"VirtualNode" json:"VirtualNode"`
	// Environments override Task and AppContainer.Environment per
	// deployment environment (--env NAME).
	Environments map[string]Override `yaml:"Environments,omitempty" json:"Environments,omitempty"`
}

// Task sizes the ECS task (or pod) the service runs in.
type Task struct {
	// Family names the task definition; it is also the service's mesh name.
	Family string `yaml:"Family" json:"Family"`
	// Cpu is in CPU units (1024 = one vCPU) and Memory in MiB, for the
	// whole task, sidecar included; 0 takes the policy's default.
	Cpu    int `yaml:"Cpu,omitempty" json:"Cpu,omitempty"`
	Memory int `yaml:"Memory,omitempty" json:"Memory,omitempty"`
	// LaunchType is FARGATE or EC2, where the policy lets the team choose.
	LaunchType string `yaml:"LaunchType,omitempty" json:"LaunchType,omitempty"`
}

// AppContainer is the team's application container.
type AppContainer struct {
	Image string `yaml:"Image" json:"Image"`
	// Port is where the app listens for its callers, on localhost behind
	// the sidecar.
	Port int `yaml:"Port" json:"Port"`
	// HealthCheckPath is an HTTP path the sidecar checks; empty means a
	// TCP connect.
	HealthCheckPath string   `yaml:"HealthCheckPath,omitempty" json:"HealthCheckPath,omitempty"`
	Command         []string `yaml:"Command,omitempty" json:"Command,omitempty"`
	// Environment are plain variables; Secrets map a variable to the ARN
	// of a Secrets Manager secret or SSM parameter, which the platform
	// resolves at start (their values never pass through Trellis).
	Environment map[string]string `yaml:"Environment,omitempty" json:"Environment,omitempty"`
	Secrets     map[string]string `yaml:"Secrets,omitempty" json:"Secrets,omitempty"`
}

// VirtualNode is the service's place in the mesh.
type VirtualNode struct {
	// Backends are the services this one may call: each gets a local
	// upstream listener and an intention; nothing else may be called.
	Backends []string `yaml:"Backends,omitempty" json:"Backends,omitempty"`
	// Protocol the app speaks: http (default), http2, grpc or tcp; it is
	// the Service's protocol when the pipeline registers a new service.
	Protocol string `yaml:"Protocol,omitempty" json:"Protocol,omitempty"`
}

// Override is what one environment changes.
type Override struct {
	Cpu         int               `yaml:"Cpu,omitempty" json:"Cpu,omitempty"`
	Memory      int               `yaml:"Memory,omitempty" json:"Memory,omitempty"`
	Environment map[string]string `yaml:"Environment,omitempty" json:"Environment,omitempty"`
}
