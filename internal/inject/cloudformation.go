package inject

// The CloudFormation output: one stack per service version holding what
// the ECS output holds (task definition and service), plus the service's
// Cloud Map registration and its auto scaling. It is built from the ECS
// output, so the two can never disagree about a container.

// Template is a CloudFormation template, in its JSON form.
type Template struct {
	FormatVersion string `json:"AWSTemplateFormatVersion"`
	Description   string `json:"Description"`
	// Metadata holds the ECS output's notes (Trellis::Notes), if any.
	Metadata   map[string]any `json:"Metadata,omitempty"`
	Parameters map[string]any `json:"Parameters"`
	Resources  map[string]any `json:"Resources"`
	Outputs    map[string]any `json:"Outputs"`
}

// cfnResource is one entry of Resources.
type cfnResource struct {
	Type       string         `json:"Type"`
	Properties map[string]any `json:"Properties"`
}

func ref(name string) map[string]any { return map[string]any{"Ref": name} }

func getAtt(name, attr string) map[string]any {
	return map[string]any{"Fn::GetAtt": []string{name, attr}}
}

// CloudFormation builds the template. The Cloud Map namespace is a
// parameter whose default is the policy's namespace, so one template
// serves every account that has the namespace under another id.
func (p *Plan) CloudFormation() *Template {
	e := p.ECS()
	td, svc := e.RegisterTaskDefinition, e.CreateService
	sc := p.Policy.Scaling

	var containers []any
	for _, c := range td.ContainerDefinitions {
		containers = append(containers, cfnContainer(c))
	}
	taskProps := map[string]any{
		"Family":                  td.Family,
		"TaskRoleArn":             td.TaskRoleArn,
		"ExecutionRoleArn":        td.ExecutionRoleArn,
		"NetworkMode":             td.NetworkMode,
		"RequiresCompatibilities": td.RequiresCompatibilities,
		"Cpu":                     td.Cpu,
		"Memory":                  td.Memory,
		"ContainerDefinitions":    containers,
		"Tags":                    cfnTags(td.Tags),
	}
	if pc := td.ProxyConfiguration; pc != nil {
		taskProps["ProxyConfiguration"] = map[string]any{
			"Type":                         pc.Type,
			"ContainerName":                pc.ContainerName,
			"ProxyConfigurationProperties": cfnKeyValues(pc.Properties),
		}
	}
	net := svc.NetworkConfiguration.AwsvpcConfiguration
	awsvpc := map[string]any{"Subnets": net.Subnets, "AssignPublicIp": net.AssignPublicIp}
	if len(net.SecurityGroups) > 0 {
		awsvpc["SecurityGroups"] = net.SecurityGroups
	}
	dc := svc.DeploymentConfiguration
	serviceProps := map[string]any{
		"Cluster":        svc.Cluster,
		"ServiceName":    svc.ServiceName,
		"TaskDefinition": ref("TaskDefinition"),
		"DesiredCount":   svc.DesiredCount,
		"LaunchType":     svc.LaunchType,
		"NetworkConfiguration": map[string]any{
			"AwsvpcConfiguration": awsvpc,
		},
		"DeploymentConfiguration": map[string]any{
			"MaximumPercent":        dc.MaximumPercent,
			"MinimumHealthyPercent": dc.MinimumHealthyPercent,
			"DeploymentCircuitBreaker": map[string]any{
				"Enable": dc.CircuitBreaker.Enable, "Rollback": dc.CircuitBreaker.Rollback,
			},
		},
		"ServiceRegistries":    []any{map[string]any{"RegistryArn": getAtt("DiscoveryService", "Arn")}},
		"EnableECSManagedTags": svc.EnableECSManagedTags,
		"PropagateTags":        svc.PropagateTags,
		"Tags":                 cfnTags(svc.Tags),
	}

	namespace := map[string]any{
		"Type":        "String",
		"Description": "the Cloud Map namespace the service version registers in",
	}
	if ns := p.Policy.ServiceDiscovery.NamespaceID; ns != "" {
		namespace["Default"] = ns
	}
	var meta map[string]any
	if len(e.Notes) > 0 {
		meta = map[string]any{"Trellis::Notes": e.Notes}
	}
	return &Template{
		Metadata:      meta,
		FormatVersion: "2010-09-09",
		Description:   p.Name + ": " + p.Service + " version " + p.Version + " with the Trellis sidecar",
		Parameters:    map[string]any{"NamespaceId": namespace},
		Resources: map[string]any{
			"TaskDefinition": cfnResource{"AWS::ECS::TaskDefinition", taskProps},
			"Service":        cfnResource{"AWS::ECS::Service", serviceProps},
			// Each version registers under its own name (two stacks cannot
			// own one Cloud Map service); the mesh's registry is what
			// groups versions into the service.
			"DiscoveryService": cfnResource{"AWS::ServiceDiscovery::Service", map[string]any{
				"Name":        p.Name,
				"NamespaceId": ref("NamespaceId"),
				"DnsConfig": map[string]any{
					"RoutingPolicy": "MULTIVALUE",
					"DnsRecords":    []any{map[string]any{"Type": "A", "TTL": 10}},
				},
				// ECS reports task health to Cloud Map.
				"HealthCheckCustomConfig": map[string]any{"FailureThreshold": 1},
				"Tags":                    cfnTags(p.tags()),
			}},
			"ScalableTarget": cfnResource{"AWS::ApplicationAutoScaling::ScalableTarget", map[string]any{
				"ServiceNamespace":  "ecs",
				"ScalableDimension": "ecs:service:DesiredCount",
				"ResourceId": map[string]any{"Fn::Join": []any{"/", []any{
					"service", svc.Cluster, getAtt("Service", "Name"),
				}}},
				"MinCapacity": sc.Min,
				"MaxCapacity": sc.Max,
			}},
			"ScalingPolicy": cfnResource{"AWS::ApplicationAutoScaling::ScalingPolicy", map[string]any{
				"PolicyName":      p.Name + "-cpu",
				"PolicyType":      "TargetTrackingScaling",
				"ScalingTargetId": ref("ScalableTarget"),
				"TargetTrackingScalingPolicyConfiguration": map[string]any{
					"TargetValue": sc.CPUTarget,
					"PredefinedMetricSpecification": map[string]any{
						"PredefinedMetricType": "ECSServiceAverageCPUUtilization",
					},
					"ScaleInCooldown":  300,
					"ScaleOutCooldown": 60,
				},
			}},
		},
		Outputs: map[string]any{
			"ServiceName":       map[string]any{"Value": getAtt("Service", "Name")},
			"TaskDefinitionArn": map[string]any{"Value": ref("TaskDefinition")},
			"DiscoveryService":  map[string]any{"Value": getAtt("DiscoveryService", "Arn")},
		},
	}
}

// cfnContainer is a container definition with CloudFormation's property
// names (the ECS API's, capitalized).
func cfnContainer(c ContainerDefinition) map[string]any {
	m := map[string]any{"Name": c.Name, "Image": c.Image, "Essential": c.Essential}
	if c.Cpu != 0 {
		m["Cpu"] = c.Cpu
	}
	if c.MemoryReservation != 0 {
		m["MemoryReservation"] = c.MemoryReservation
	}
	if len(c.Command) > 0 {
		m["Command"] = c.Command
	}
	if c.User != "" {
		m["User"] = c.User
	}
	if c.ReadonlyRootFS {
		m["ReadonlyRootFilesystem"] = true
	}
	if lp := c.LinuxParameters; lp != nil && lp.Capabilities != nil {
		m["LinuxParameters"] = map[string]any{"Capabilities": map[string]any{"Add": lp.Capabilities.Add, "Drop": lp.Capabilities.Drop}}
	}
	var ports []any
	for _, pm := range c.PortMappings {
		ports = append(ports, map[string]any{"ContainerPort": pm.ContainerPort, "Protocol": pm.Protocol, "Name": pm.Name})
	}
	if ports != nil {
		m["PortMappings"] = ports
	}
	if len(c.Environment) > 0 {
		m["Environment"] = cfnKeyValues(c.Environment)
	}
	var secrets []any
	for _, s := range c.Secrets {
		secrets = append(secrets, map[string]any{"Name": s.Name, "ValueFrom": s.ValueFrom})
	}
	if secrets != nil {
		m["Secrets"] = secrets
	}
	var deps []any
	for _, d := range c.DependsOn {
		deps = append(deps, map[string]any{"ContainerName": d.ContainerName, "Condition": d.Condition})
	}
	if deps != nil {
		m["DependsOn"] = deps
	}
	if h := c.HealthCheck; h != nil {
		m["HealthCheck"] = map[string]any{"Command": h.Command, "Interval": h.Interval, "Timeout": h.Timeout, "Retries": h.Retries, "StartPeriod": h.StartPeriod}
	}
	if l := c.LogConfiguration; l != nil {
		lc := map[string]any{"LogDriver": l.LogDriver}
		if len(l.Options) > 0 {
			lc["Options"] = l.Options
		}
		m["LogConfiguration"] = lc
	}
	return m
}

func cfnKeyValues(kvs []KeyValue) []any {
	var out []any
	for _, kv := range kvs {
		out = append(out, map[string]any{"Name": kv.Name, "Value": kv.Value})
	}
	return out
}

func cfnTags(tags []Tag) []any {
	var out []any
	for _, t := range tags {
		out = append(out, map[string]any{"Key": t.Key, "Value": t.Value})
	}
	return out
}
