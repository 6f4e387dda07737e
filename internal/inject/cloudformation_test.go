package inject

import (
	"encoding/json"
	"testing"
)

// Every Ref and Fn::GetAtt in the template names a resource or parameter
// that exists, the service registers in Cloud Map, and scaling follows the
// policy.
func TestCloudFormationReferences(t *testing.T) {
	plan, ds := load(t, pipeline+"hello-web.yaml", pipeline+"policy.yaml", "3f9c2a1b", "")
	if ds != nil {
		t.Fatal(ds)
	}
	b, err := json.Marshal(plan.CloudFormation())
	if err != nil {
		t.Fatal(err)
	}
	var tpl struct {
		Parameters map[string]any
		Resources  map[string]struct {
			Type       string
			Properties map[string]any
		}
	}
	if err := json.Unmarshal(b, &tpl); err != nil {
		t.Fatal(err)
	}
	var refs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if r, ok := v["Ref"].(string); ok {
				refs = append(refs, r)
			}
			if g, ok := v["Fn::GetAtt"].([]any); ok {
				refs = append(refs, g[0].(string))
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	var raw map[string]any
	json.Unmarshal(b, &raw)
	walk(raw)
	if len(refs) < 5 {
		t.Fatalf("only %d references: %v", len(refs), refs)
	}
	for _, r := range refs {
		_, isRes := tpl.Resources[r]
		_, isParam := tpl.Parameters[r]
		if !isRes && !isParam {
			t.Errorf("reference to %q, which is neither a resource nor a parameter", r)
		}
	}
	types := map[string]string{}
	for name, r := range tpl.Resources {
		types[r.Type] = name
	}
	for _, want := range []string{"AWS::ECS::TaskDefinition", "AWS::ECS::Service", "AWS::ServiceDiscovery::Service",
		"AWS::ApplicationAutoScaling::ScalableTarget", "AWS::ApplicationAutoScaling::ScalingPolicy"} {
		if types[want] == "" {
			t.Errorf("no %s", want)
		}
	}
	st := tpl.Resources["ScalableTarget"].Properties
	tt := tpl.Resources["ScalingPolicy"].Properties["TargetTrackingScalingPolicyConfiguration"].(map[string]any)
	if st["MinCapacity"] != 2.0 || st["MaxCapacity"] != 6.0 || tt["TargetValue"] != 80.0 {
		t.Errorf("scaling min %v max %v target %v, want 2/6/80", st["MinCapacity"], st["MaxCapacity"], tt["TargetValue"])
	}
	regs := tpl.Resources["Service"].Properties["ServiceRegistries"].([]any)
	if len(regs) != 1 {
		t.Errorf("service registries %v", regs)
	}
	if d := tpl.Parameters["NamespaceId"].(map[string]any)["Default"]; d != "ns-0a1b2c3d4e5f6a7b8" {
		t.Errorf("namespace default %v, want the policy's", d)
	}
}
