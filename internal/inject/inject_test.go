package inject

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/redirect"
	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite the golden files")

const pipeline = "../../examples/pipeline/"

func load(t testing.TB, manifest, policy, version, env string) (*Plan, Diagnostics) {
	t.Helper()
	mf, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := os.ReadFile(policy)
	if err != nil {
		t.Fatal(err)
	}
	return Load(Input{ManifestFile: filepath.Base(manifest), Manifest: bytes.NewReader(mf),
		PolicyFile: filepath.Base(policy), Policy: bytes.NewReader(pf), Version: version, Env: env})
}

// golden compares got with testdata/name semantically (as decoded JSON or
// YAML, so that formatting is free), or rewrites it with -update.
func golden(t *testing.T, name string, got []byte, unmarshal func([]byte, any) error) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	var g, w any
	if err := unmarshal(got, &g); err != nil {
		t.Fatalf("output does not parse: %v", err)
	}
	if err := unmarshal(want, &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s differs from the golden file; got:\n%s", name, got)
	}
}

func TestGoldenOutputs(t *testing.T) {
	for _, tc := range []struct{ manifest, env string }{
		{"hello-web", ""}, {"hello-web", "prod"}, {"hello-backend", ""},
	} {
		name := tc.manifest
		if tc.env != "" {
			name += "-" + tc.env
		}
		t.Run(name, func(t *testing.T) {
			plan, ds := load(t, pipeline+tc.manifest+".yaml", pipeline+"policy.yaml", "3f9c2a1b", tc.env)
			if ds != nil {
				t.Fatalf("diagnostics:\n%v", ds)
			}
			ecs, _ := json.MarshalIndent(plan.ECS(), "", "  ")
			golden(t, name+".ecs.json", ecs, json.Unmarshal)
			c, err := plan.Compose()
			if err != nil {
				t.Fatal(err)
			}
			compose, _ := yaml.Marshal(c)
			golden(t, name+".compose.yaml", compose, yaml.Unmarshal)
			cfn, _ := json.MarshalIndent(plan.CloudFormation(), "", "  ")
			golden(t, name+".cfn.json", cfn, json.Unmarshal)
			k8s, err := plan.Kubernetes()
			if err != nil {
				t.Fatal(err)
			}
			golden(t, name+".k8s.yaml", k8s, yamlDocs)
			mesh, _ := json.MarshalIndent(plan.Registration(Deployed{}), "", "  ")
			golden(t, name+".registration.json", mesh, json.Unmarshal)
		})
	}
	// Mesh DNS on: every output points the app's resolver at the sidecar
	// where its platform allows (ECS on EC2 in transparent mode).
	t.Run("hello-web-dns", func(t *testing.T) {
		plan, ds := load(t, pipeline+"hello-web.yaml", pipeline+"policy.yaml", "3f9c2a1b", "")
		if ds != nil {
			t.Fatalf("diagnostics:\n%v", ds)
		}
		plan.Policy.DNS.Enabled, plan.Policy.DNS.Upstream = true, "10.96.0.10:53"
		plan.Policy.Sidecar.TransparentProxy = true
		plan.LaunchType = "EC2"
		ecs, _ := json.MarshalIndent(plan.ECS(), "", "  ")
		golden(t, "hello-web-dns.ecs.json", ecs, json.Unmarshal)
		cfn, _ := json.MarshalIndent(plan.CloudFormation(), "", "  ")
		golden(t, "hello-web-dns.cfn.json", cfn, json.Unmarshal)
		c, err := plan.Compose()
		if err != nil {
			t.Fatal(err)
		}
		compose, _ := yaml.Marshal(c)
		golden(t, "hello-web-dns.compose.yaml", compose, yaml.Unmarshal)
		k8s, err := plan.Kubernetes()
		if err != nil {
			t.Fatal(err)
		}
		golden(t, "hello-web-dns.k8s.yaml", k8s, yamlDocs)
	})
	// Transparent mode changes only the ECS output (the agent installs the
	// redirect rules; elsewhere nothing would).
	t.Run("hello-web-transparent", func(t *testing.T) {
		plan, ds := load(t, pipeline+"hello-web.yaml", pipeline+"policy.yaml", "3f9c2a1b", "")
		if ds != nil {
			t.Fatalf("diagnostics:\n%v", ds)
		}
		plan.Policy.Sidecar.TransparentProxy = true
		ecs, _ := json.MarshalIndent(plan.ECS(), "", "  ")
		golden(t, "hello-web-transparent.ecs.json", ecs, json.Unmarshal)
	})
}

// The properties every ECS output must have, checked on the structure
// rather than on a golden file.
func TestECSInvariants(t *testing.T) {
	for _, transparent := range []bool{false, true} {
		plan, ds := load(t, pipeline+"hello-web.yaml", pipeline+"policy.yaml", "3f9c2a1b", "")
		if ds != nil {
			t.Fatal(ds)
		}
		plan.Policy.Sidecar.TransparentProxy = transparent
		e := plan.ECS()
		td := e.RegisterTaskDefinition
		var proxy *ContainerDefinition
		for i, c := range td.ContainerDefinitions {
			if c.Name == SidecarName {
				proxy = &td.ContainerDefinitions[i]
			}
		}
		if proxy == nil {
			t.Fatal("no sidecar container")
		}
		ports := map[int]string{}
		for _, c := range td.ContainerDefinitions {
			for _, pm := range c.PortMappings {
				if other, dup := ports[pm.ContainerPort]; dup {
					t.Errorf("port %d of %s is also %s's", pm.ContainerPort, c.Name, other)
				}
				ports[pm.ContainerPort] = c.Name
			}
			if c.Name == SidecarName {
				continue
			}
			if len(c.DependsOn) != 1 || c.DependsOn[0] != (ContainerDepends{SidecarName, "HEALTHY"}) {
				t.Errorf("%s depends on %v, want the sidecar HEALTHY", c.Name, c.DependsOn)
			}
			if c.PortMappings[0].ContainerPort != plan.App.Port || !strings.Contains(strings.Join(proxy.Command, " "), "--app-port 8080") {
				t.Errorf("app port %v, sidecar command %v", c.PortMappings, proxy.Command)
			}
		}
		if hc := proxy.HealthCheck.Command; hc[0] != "CMD" || strings.Contains(strings.Join(hc, " "), "sh") || strings.Contains(strings.Join(hc, " "), "curl") {
			t.Errorf("sidecar health check %v needs a shell or curl", hc)
		}
		if e.CreateService.ServiceName != "hello-web-3f9c2a1b" || td.NetworkMode != "awsvpc" || td.RequiresCompatibilities[0] != "FARGATE" {
			t.Errorf("service %q, network %q, compatibilities %v", e.CreateService.ServiceName, td.NetworkMode, td.RequiresCompatibilities)
		}
		pc := td.ProxyConfiguration
		if !transparent {
			if pc != nil {
				t.Errorf("explicit mode has a proxyConfiguration")
			}
			continue
		}
		props := map[string]string{}
		for _, kv := range pc.Properties {
			props[kv.Name] = kv.Value
		}
		if props["IgnoredUID"] != proxy.User {
			t.Errorf("IgnoredUID %s, sidecar user %s", props["IgnoredUID"], proxy.User)
		}
		// The ports ECS redirects to are the ones the proxy listens on,
		// and the app calls its backends at their own names.
		cmd := strings.Join(proxy.Command, " ")
		for flag, prop := range map[string]string{"--ingress-port": "ProxyIngressPort", "--egress-port": "ProxyEgressPort"} {
			if !strings.Contains(cmd, flag+" "+props[prop]+" ") && !strings.HasSuffix(cmd, flag+" "+props[prop]) {
				t.Errorf("sidecar command %q lacks %s %s (the %s)", cmd, flag, props[prop], prop)
			}
		}
		for _, c := range td.ContainerDefinitions {
			for _, kv := range c.Environment {
				if strings.HasPrefix(kv.Name, "UPSTREAM_") {
					t.Errorf("%s gets %s in transparent mode", c.Name, kv.Name)
				}
			}
		}
		for _, ip := range redirect.MetadataAddrs {
			if !strings.Contains(props["EgressIgnoredIPs"], ip) {
				t.Errorf("EgressIgnoredIPs %q lacks %s", props["EgressIgnoredIPs"], ip)
			}
		}
		if props["AppPorts"] != "8080" {
			t.Errorf("AppPorts %q", props["AppPorts"])
		}
	}
}

// Each invalid input and its exact diagnostics (testdata/bad/NAME.yaml
// against the example policy, or NAME.policy.yaml against hello-web).
func TestDiagnosticsGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad/*.yaml")
	if len(files) == 0 {
		t.Fatal("no cases")
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		t.Run(name, func(t *testing.T) {
			manifest, policy := f, pipeline+"policy.yaml"
			if strings.HasSuffix(name, ".policy") {
				manifest, policy = pipeline+"hello-web.yaml", f
			}
			plan, ds := load(t, manifest, policy, "3f9c2a1b", "")
			if plan != nil || len(ds) == 0 {
				t.Fatalf("accepted")
			}
			got := []byte(ds.Error() + "\n")
			path := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				os.WriteFile(path, got, 0o644)
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if string(got) != string(want) {
				t.Errorf("diagnostics:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// A YAML bomb (anchors that expand exponentially) is refused at once,
// before anything expands it.
func TestYAMLBombRefused(t *testing.T) {
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 30; i++ {
		b.WriteString("a" + itoa(i) + ": &a" + itoa(i) + " [")
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*a" + itoa(i-1))
		}
		b.WriteString("]\n")
	}
	start := time.Now()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var m Manifest
	_, ds := decode("bomb.yaml", strings.NewReader(b.String()), &m)
	runtime.ReadMemStats(&after)
	if len(ds) != 1 || !strings.Contains(ds[0].Message, "anchors and aliases are not supported") {
		t.Fatalf("diagnostics %v", ds)
	}
	// Not a timing assertion on speed, a guard against expansion: 10^30
	// nodes would never finish.
	if time.Since(start) > 5*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
	// Nor memory: the input is 3 KB, its expansion 10^30 nodes; the
	// refusal allocates a small multiple of the input.
	if n := after.TotalAlloc - before.TotalAlloc; n > 32<<20 {
		t.Errorf("refusing the bomb allocated %d MiB", n>>20)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func FuzzManifest(f *testing.F) {
	for _, p := range []string{pipeline + "hello-web.yaml", pipeline + "hello-backend.yaml", pipeline + "policy.yaml"} {
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	pol, _ := os.ReadFile(pipeline + "policy.yaml")
	web, _ := os.ReadFile(pipeline + "hello-web.yaml")
	// A policy with mesh DNS and a plain host's settings.
	f.Add(append(bytes.Clone(pol), "  dns: {enabled: true, port: 15053, upstream: 10.96.0.10:53}\n"+
		"  host: {user: px, network: vpc-a, binaryURL: \"https://x/t\", binarySHA256: "+strings.Repeat("ab", 32)+
		", caPEM: \"-----BEGIN CERTIFICATE-----\\nx\\n-----END CERTIFICATE-----\\n\"}\n"...))
	f.Fuzz(func(t *testing.T, in []byte) {
		// As a manifest and as a policy: never a panic, and either a plan
		// or diagnostics that say where.
		for _, pair := range [][2][]byte{{in, pol}, {web, in}} {
			plan, ds := Load(Input{ManifestFile: "m.yaml", Manifest: bytes.NewReader(pair[0]), PolicyFile: "p.yaml", Policy: bytes.NewReader(pair[1]), Version: "v1"})
			if (plan == nil) == (len(ds) == 0) {
				t.Fatalf("plan %v with %d diagnostics", plan != nil, len(ds))
			}
			for _, d := range ds {
				if d.Line < 1 || d.File == "" || d.Message == "" {
					t.Fatalf("diagnostic without a place: %+v", d)
				}
			}
			if plan != nil {
				plan.ECS()
				// Compose needs the DNS upstream with mesh DNS; the host
				// output its own settings: an error, never a panic.
				if _, err := plan.Compose(); err != nil && (!plan.Policy.DNS.Enabled || plan.Policy.DNS.Upstream != "") {
					t.Fatal(err)
				}
				if fs, err := plan.Host(); err == nil {
					fs.Listing()
				}
			}
		}
	})
}
