package inject

// The outputs checked by the platforms' own libraries: the AWS SDK for Go
// v2 (its input validation and its wire format, offline) and the
// compose-spec loader.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ecs"
	"github.com/compose-spec/compose-go/v2/loader"
	composetypes "github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"
)

// captured answers every request with a canned body and keeps what was
// sent: the SDK runs its whole stack, validation and serialization
// included, without a network.
type captured struct {
	reqs   []*http.Request
	bodies [][]byte
	answer string
}

func (c *captured) Do(r *http.Request) (*http.Response, error) {
	b, _ := io.ReadAll(r.Body)
	c.reqs, c.bodies = append(c.reqs, r), append(c.bodies, b)
	return &http.Response{
		StatusCode: 200, Header: http.Header{"Content-Type": {"application/x-amz-json-1.1"}},
		Body: io.NopCloser(strings.NewReader(c.answer)), Request: r,
	}, nil
}

// strictly decodes our JSON into an SDK input shape, refusing any field
// the SDK does not have.
func strictly(t *testing.T, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("does not decode into %T: %v", v, err)
	}
}

func sdkClient(c *captured) *ecs.Client {
	return ecs.New(ecs.Options{
		Region: "eu-west-1",
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "secret"}, nil
		}),
		HTTPClient:       c,
		RetryMaxAttempts: 1,
	})
}

// same reports whether two JSON documents are equal as data.
func same(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(x, y)
}

func TestECSThroughTheAWSSDK(t *testing.T) {
	for _, tc := range []struct {
		transparent, dns bool
		launchType       string
	}{{false, false, "FARGATE"}, {true, false, "FARGATE"}, {true, true, "EC2"}} {
		plan, ds := load(t, pipeline+"hello-web.yaml", pipeline+"policy.yaml", "3f9c2a1b", "")
		if ds != nil {
			t.Fatal(ds)
		}
		plan.Policy.Sidecar.TransparentProxy = tc.transparent
		plan.Policy.DNS.Enabled = tc.dns
		plan.LaunchType = tc.launchType
		out := plan.ECS()
		tdJSON, _ := json.Marshal(out.RegisterTaskDefinition)
		svcJSON, _ := json.Marshal(out.CreateService)

		var td ecs.RegisterTaskDefinitionInput
		strictly(t, tdJSON, &td)
		var svc ecs.CreateServiceInput
		strictly(t, svcJSON, &svc)

		c := &captured{answer: `{"taskDefinition":{"family":"hello-web","revision":1}}`}
		if _, err := sdkClient(c).RegisterTaskDefinition(context.Background(), &td); err != nil {
			t.Fatalf("RegisterTaskDefinition: %v", err)
		}
		c.answer = `{"service":{"serviceName":"hello-web-3f9c2a1b"}}`
		if _, err := sdkClient(c).CreateService(context.Background(), &svc); err != nil {
			t.Fatalf("CreateService: %v", err)
		}
		// What the SDK puts on the wire is exactly our JSON: no field of
		// ours was dropped or renamed on the way.
		for i, want := range []struct {
			target string
			body   []byte
		}{{"AmazonEC2ContainerServiceV20141113.RegisterTaskDefinition", tdJSON}, {"AmazonEC2ContainerServiceV20141113.CreateService", svcJSON}} {
			if got := c.reqs[i].Header.Get("X-Amz-Target"); got != want.target {
				t.Errorf("request %d is %s, want %s", i, got, want.target)
			}
			if !same(t, c.bodies[i], want.body) {
				t.Errorf("%s on the wire:\n%s\nours:\n%s", want.target, c.bodies[i], want.body)
			}
		}
	}
}

// The SDK's validation is live in this harness: an input missing a
// required field never reaches the (captured) network.
func TestAWSSDKValidationRefuses(t *testing.T) {
	c := &captured{answer: `{}`}
	_, err := sdkClient(c).RegisterTaskDefinition(context.Background(), &ecs.RegisterTaskDefinitionInput{})
	if err == nil || !strings.Contains(err.Error(), "validation") || len(c.reqs) != 0 {
		t.Fatalf("err %v after %d requests", err, len(c.reqs))
	}
}

func TestComposeLoads(t *testing.T) {
	for _, dns := range []bool{false, true} {
		t.Run(fmt.Sprintf("dns=%v", dns), func(t *testing.T) { testComposeLoads(t, dns) })
	}
}

func testComposeLoads(t *testing.T, dns bool) {
	plan, ds := load(t, pipeline+"hello-web.yaml", pipeline+"policy.yaml", "3f9c2a1b", "")
	if ds != nil {
		t.Fatal(ds)
	}
	plan.Policy.DNS.Enabled, plan.Policy.DNS.Upstream = dns, "192.0.2.53:53"
	c, err := plan.Compose()
	if err != nil {
		t.Fatal(err)
	}
	b, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	details := func(env map[string]string) composetypes.ConfigDetails {
		return composetypes.ConfigDetails{
			WorkingDir:  t.TempDir(),
			ConfigFiles: []composetypes.ConfigFile{{Filename: "compose.yaml", Content: b}},
			Environment: env,
		}
	}
	ctx := context.Background()
	// The sidecar's token must come from the environment compose runs in.
	if _, err := loader.LoadWithContext(ctx, details(map[string]string{})); err == nil || !strings.Contains(err.Error(), "TRELLIS_TOKEN") {
		t.Fatalf("loaded without TRELLIS_TOKEN: %v", err)
	}
	p, err := loader.LoadWithContext(ctx, details(map[string]string{"TRELLIS_TOKEN": "t0ken"}))
	if err != nil {
		t.Fatalf("compose-go refuses the output: %v\n%s", err, b)
	}
	if p.Name != "hello-web-3f9c2a1b" {
		t.Errorf("project %q", p.Name)
	}
	app, err := p.GetService("app")
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := p.GetService(SidecarName)
	if err != nil {
		t.Fatal(err)
	}
	if app.NetworkMode != "service:"+SidecarName {
		t.Errorf("app network_mode %q", app.NetworkMode)
	}
	if d := app.DependsOn[SidecarName]; d.Condition != composetypes.ServiceConditionHealthy {
		t.Errorf("app depends on the sidecar %+v", d)
	}
	if proxy.HealthCheck == nil || strings.Join(proxy.HealthCheck.Test, " ") != "CMD "+strings.Join(plan.readyCommand(), " ") {
		t.Errorf("sidecar health check %+v", proxy.HealthCheck)
	}
	if tok := proxy.Environment["TRELLIS_TOKEN"]; tok == nil || *tok != "t0ken" {
		t.Errorf("sidecar TRELLIS_TOKEN %v", tok)
	}
	if len(proxy.Ports) != 1 || proxy.Ports[0].Target != uint32(plan.Policy.Sidecar.PublicPort) {
		t.Errorf("sidecar ports %+v", proxy.Ports)
	}
	// Mesh DNS: the namespace's resolver is the sidecar, which may listen
	// on port 53 and forwards elsewhere than to itself.
	cmd := strings.Join(proxy.Command, " ")
	if dns {
		if strings.Join(proxy.DNS, ",") != "127.0.0.1" || proxy.Sysctls[unprivilegedPortStart] != "53" || len(app.DNS) != 0 {
			t.Errorf("mesh DNS: sidecar dns %v sysctls %v, app dns %v", proxy.DNS, proxy.Sysctls, app.DNS)
		}
		if !strings.Contains(cmd, "--dns-listen 127.0.0.1:53 --dns-upstream 192.0.2.53:53") {
			t.Errorf("mesh DNS: sidecar command %q", cmd)
		}
	} else if len(proxy.DNS) != 0 || len(proxy.Sysctls) != 0 || strings.Contains(cmd, "--dns") {
		t.Errorf("mesh DNS off, but dns %v sysctls %v command %q", proxy.DNS, proxy.Sysctls, cmd)
	}
	if proxy.User != "1337" || !proxy.ReadOnly {
		t.Errorf("sidecar user %q read-only %v", proxy.User, proxy.ReadOnly)
	}
}
