package appmesh

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// render is what a golden file holds: the files Convert's result
// writes, then the report.
func render(t *testing.T, files ...string) []byte {
	t.Helper()
	var objs []Object
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		o, err := Read(filepath.ToSlash(name), f, Options{})
		f.Close()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		objs = append(objs, o...)
	}
	res, err := Convert(objs)
	if err != nil {
		t.Fatalf("convert: %v", err)
	}
	out, err := res.Files()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, f := range out {
		b.WriteString("==> " + f.Name + " <==\n")
		b.Write(f.Data)
	}
	b.WriteString("==> report <==\n")
	res.Report.WriteText(&b)
	if res.Report.Carried() {
		b.WriteString("carried: yes\n")
	} else {
		b.WriteString("carried: no\n")
	}
	return b.Bytes()
}

// TestGolden covers every App Mesh resource type and listener protocol
// in each form: CloudFormation YAML and JSON, describe-* JSON (single,
// array and list outputs) and Kubernetes resources.
func TestGolden(t *testing.T) {
	describe, _ := filepath.Glob("testdata/describe/*.json")
	cases := []struct {
		name  string
		files []string
	}{
		{"hello-cfn-yaml", []string{"testdata/hello.cfn.yaml"}},
		{"protocols-cfn-json", []string{"testdata/protocols.cfn.json"}},
		{"describe", describe},
		{"kubernetes", []string{"testdata/kubernetes.yaml"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := render(t, tc.files...)
			golden := filepath.Join("testdata/golden", tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the golden file (go test -update to accept):\n%s", tc.name, diff(string(want), string(got)))
			}
		})
	}
}

func diff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			return "line " + itoa(i+1) + ":\n- " + a + "\n+ " + b
		}
	}
	return ""
}

func itoa(i int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + fmtInt(i)) }

func fmtInt(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return fmtInt(i/10) + string(rune('0'+i%10))
}

// TestHelloGateway pins the hello application's ingress rewrite and
// split exactly: /hello-service/ -> / to hello-web, 90/10 to
// hello-backend's v1 and v2.
func TestHelloGateway(t *testing.T) {
	f, _ := os.Open("testdata/hello.cfn.yaml")
	defer f.Close()
	objs, err := Read("hello.cfn.yaml", f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Convert(objs)
	if err != nil {
		t.Fatal(err)
	}
	var gw, route bool
	for _, r := range res.Resources {
		switch {
		case r.Gateway != nil:
			got := r.Gateway.Listeners[0].Routes[0]
			if got.PathPrefix != "/hello-service/" || got.RewritePrefix != "/" || got.Service != "hello-web" || r.Gateway.Listeners[0].Port != 8000 {
				t.Errorf("gateway route: got %+v", got)
			}
			gw = true
		case r.Route != nil && r.Name == "hello-backend":
			ts := r.Route.Rules[0].Targets
			if len(ts) != 2 || ts[0].Version != "v1" || ts[0].Weight != 90 || ts[1].Version != "v2" || ts[1].Weight != 10 {
				t.Errorf("route targets: got %+v, want v1 90, v2 10", ts)
			}
			route = true
		}
	}
	if !gw || !route {
		t.Errorf("got gateway %v, route %v; want both", gw, route)
	}
	if !res.Report.Carried() {
		t.Errorf("hello did not carry over: %+v", res.Report.Findings)
	}
}

// TestDefaultRewrite: a gateway route with no rewrite has its matched
// prefix rewritten to /, as App Mesh does; defaultPrefix DISABLED keeps
// the path.
func TestDefaultRewrite(t *testing.T) {
	for _, tc := range []struct{ rewrite, want string }{
		{"", "/"},
		{"rewrite: {prefix: {defaultPrefix: DISABLED}}", ""},
		{"rewrite: {prefix: {value: /v2/}}", "/v2/"},
	} {
		doc := `
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualGateway
metadata: {name: gw}
spec:
  listeners: [{portMapping: {port: 80, protocol: http}}]
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualService
metadata: {name: api}
spec: {provider: {virtualNode: {virtualNodeRef: {name: api-v1}}}}
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualNode
metadata: {name: api-v1}
spec: {listeners: [{portMapping: {port: 80, protocol: http}}]}
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: GatewayRoute
metadata: {name: api}
spec:
  httpRoute:
    match: {prefix: /api/}
    action:
      target: {virtualService: {virtualServiceRef: {name: api}}}
      ` + tc.rewrite + "\n"
		objs, err := Read("gw.yaml", strings.NewReader(doc), Options{})
		if err != nil {
			t.Fatal(err)
		}
		res, err := Convert(objs)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res.Resources {
			if r.Gateway != nil {
				if got := r.Gateway.Listeners[0].Routes[0].RewritePrefix; got != tc.want {
					t.Errorf("%q: got rewritePrefix %q, want %q", tc.rewrite, got, tc.want)
				}
			}
		}
	}
}

// TestErrors: unreadable input gets one clear error with file and line.
func TestErrors(t *testing.T) {
	bomb := "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
	for _, tc := range []struct {
		name, doc string
		params    map[string]string
		want      string
	}{
		{"unresolvable ref", "Parameters:\n  Domain: {Type: String}\nResources:\n  S:\n    Type: AWS::AppMesh::VirtualService\n    Properties:\n      MeshName: m\n      VirtualServiceName: !Sub 'api.${Domain}'\n",
			nil, "in.yaml:8: Resources.S.Properties.VirtualServiceName: !Ref Domain: parameter Domain (line 2) has no Default; supply it with --param Domain=VALUE"},
		{"import value", "Resources:\n  S:\n    Type: AWS::AppMesh::VirtualService\n    Properties:\n      MeshName: {\"Fn::ImportValue\": MeshExport}\n      VirtualServiceName: api\n",
			nil, "in.yaml:5: Resources.S.Properties.MeshName: !ImportValue MeshExport: the export is another stack's; supply it with --param MeshExport=VALUE"},
		{"pseudo parameter", "Resources:\n  S:\n    Type: AWS::AppMesh::VirtualService\n    Properties:\n      MeshName: !Ref AWS::StackName\n      VirtualServiceName: api\n",
			nil, "in.yaml:5: Resources.S.Properties.MeshName: !Ref AWS::StackName: known only when the stack is deployed; supply it with --param AWS::StackName=VALUE"},
		{"unknown cfn type", "Resources:\n  S:\n    Type: AWS::AppMesh::VirtualThing\n    Properties: {}\n",
			nil, `in.yaml:3: Resources.S.Type: unknown App Mesh resource type "AWS::AppMesh::VirtualThing"`},
		{"unknown k8s kind", "apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualThing\nmetadata: {name: x}\n",
			nil, `in.yaml:2: kind: unknown App Mesh resource type "VirtualThing"`},
		{"old k8s version", "apiVersion: appmesh.k8s.aws/v1beta1\nkind: Mesh\nmetadata: {name: x}\n",
			nil, "in.yaml:1: apiVersion: appmesh.k8s.aws/v1beta1 is not supported"},
		{"malformed yaml", "Resources:\n  S:\n    Type: [unclosed\n", nil, "in.yaml:3: malformed YAML/JSON"},
		{"malformed json", "{\"virtualNode\": {\"meshName\": \"m\",\n \"spec\": {]}}\n", nil, "in.yaml:2: malformed YAML/JSON"},
		{"yaml bomb", bomb, nil, "in.yaml:1: line 1: YAML anchors and aliases are refused"},
		{"not app mesh", "hello: world\n", nil, "in.yaml:1: not an App Mesh document"},
		{"list output without spec", `{"virtualNodes": [{"meshName": "m", "virtualNodeName": "a", "arn": "x"}]}`, nil, "in.yaml:1: virtualNodes[0]: VirtualNode a has no spec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Read("in.yaml", strings.NewReader(tc.doc), Options{Params: tc.params})
			if err == nil {
				t.Fatalf("got %d objects, no error; want %q", len(objs), tc.want)
			}
			if objs != nil {
				t.Errorf("got objects with the error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %q, want it to contain %q", err, tc.want)
			}
			var e *Error
			if !errors.As(err, &e) || e.File != "in.yaml" {
				t.Errorf("got %T, want an *Error naming the file", err)
			}
		})
	}
}

// TestParams: --param supplies what the template leaves open and
// overrides defaults.
func TestParams(t *testing.T) {
	doc := "Parameters:\n  Domain: {Type: String}\nResources:\n  S:\n    Type: AWS::AppMesh::VirtualService\n    Properties:\n      MeshName: !ImportValue mesh-name\n      VirtualServiceName: !Sub 'api.${Domain}'\n"
	objs, err := Read("in.yaml", strings.NewReader(doc), Options{Params: map[string]string{"Domain": "corp.local", "mesh-name": "m"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].Name != "api.corp.local" || objs[0].Mesh != "m" {
		t.Errorf("got %+v, want api.corp.local in mesh m", objs)
	}
}

// TestLimits: inputs over the byte or node bound are refused.
func TestLimits(t *testing.T) {
	big := "a: [" + strings.Repeat("1,", 5000) + "1]\n"
	if _, err := Read("big.yaml", strings.NewReader(big), Options{MaxNodes: 1000}); err == nil || !strings.Contains(err.Error(), "more than 1000 YAML nodes") {
		t.Errorf("nodes: got %v", err)
	}
	if _, err := Read("big.yaml", strings.NewReader(big), Options{MaxBytes: 100}); err == nil || !strings.Contains(err.Error(), "larger than 100 bytes") {
		t.Errorf("bytes: got %v", err)
	}
}

// FuzzRead: the reader and the mapping never panic, and an input is
// either read or refused with an error, never both.
func FuzzRead(f *testing.F) {
	for _, name := range []string{"testdata/hello.cfn.yaml", "testdata/protocols.cfn.json", "testdata/kubernetes.yaml", "testdata/describe/routes.json", "testdata/describe/gateway.json"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("Resources: {S: {Type: AWS::AppMesh::Route, Properties: {VirtualRouterName: !GetAtt [S, RouteName], RouteName: !Select [0, !Split [',', 'a,b']]}}}"))
	f.Add([]byte("a: &a [x]\nb: *a\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		objs, err := Read("fuzz.yaml", bytes.NewReader(b), Options{MaxNodes: 5000})
		if err != nil {
			if objs != nil {
				t.Fatal("objects and an error")
			}
			return
		}
		res, err := Convert(objs)
		if err == nil {
			if _, err := res.Files(); err != nil {
				t.Fatalf("files: %v", err)
			}
		}
	})
}

// TestPlan: the cutover starts permissive, runs every version under
// Trellis too, gives each service a gateway route, moves App Mesh's
// callers by App Mesh's route weights and ends strict.
func TestPlan(t *testing.T) {
	f, _ := os.Open("testdata/hello.cfn.yaml")
	defer f.Close()
	objs, err := Read("hello.cfn.yaml", f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Convert(objs)
	if err != nil {
		t.Fatal(err)
	}
	plan := Plan(res, "out")
	for _, want := range []string{
		"spec: {mtls: permissive, defaultPolicy: deny}",
		"- {pathPrefix: /trellis-cutover/hello-web/, service: hello-web, rewritePrefix: /}",
		"- {pathPrefix: /trellis-cutover/hello-backend/, service: hello-backend, rewritePrefix: /}",
		// Trellis callers follow the imported Routes from the start ...
		"trellis apply -f out/services.yaml -f out/intentions.yaml -f out/routes.yaml",
		// ... to versions deployed under Trellis with their App Mesh names,
		"trellis inject ecs -f out/manifests/hello-web-v1.yaml --policy policy.yaml --version v1",
		// and App Mesh's callers move by App Mesh's route, in proportion.
		"aws appmesh create-virtual-node --mesh-name hello --virtual-node-name hello-backend-trellis",
		`{"virtualNode":"hello-backend-v1","weight":45},{"virtualNode":"hello-backend-v2","weight":5},{"virtualNode":"hello-backend-trellis","weight":50}`,
		"trellis apply -f out/mesh.yaml   # mtls strict",
	} {
		if !strings.Contains(plan, want) {
			t.Errorf("plan lacks %q:\n%s", want, plan)
		}
	}
	// No Trellis Route ever weights a version no Trellis instance runs.
	if strings.Contains(plan, "version: trellis") || strings.Contains(plan, "kind: Route") {
		t.Errorf("the plan rewrites Trellis Routes; App Mesh's callers move by App Mesh's routes:\n%s", plan)
	}
	if i, j := strings.Index(plan, "mtls: permissive"), strings.Index(plan, "mtls strict"); i < 0 || j < i {
		t.Errorf("plan does not go permissive first, strict last")
	}
}
