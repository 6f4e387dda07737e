package v1

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestDecodeYAML(t *testing.T) {
	good := `kind: Mesh
name: default
spec:
  defaultPolicy: deny
---
kind: Service
name: greeter
spec:
  protocol: http
---
kind: Intention
name: greeter.name
spec: {source: greeter, destination: name, action: allow}
`
	res, err := DecodeYAML("good.yaml", strings.NewReader(good))
	if err != nil {
		t.Fatalf("DecodeYAML: %v", err)
	}
	if len(res) != 3 {
		t.Fatalf("got %d resources, want 3", len(res))
	}
	if got := res[0].Mesh.EffectiveDefaultPolicy(); got != Deny {
		t.Errorf("mesh default policy = %q, want deny", got)
	}
	if got := res[2].Intention.Destination; got != "name" {
		t.Errorf("intention destination = %q, want name", got)
	}

	bad := []struct {
		name, in string
		want     []string // every substring must appear
	}{
		{"unknown spec field", "kind: Service\nname: a\nspec:\n  protocl: http\n",
			[]string{"bad.yaml:4: spec.protocl: unknown field (did you mean \"protocol\"?)"}},
		{"unknown top field", "kind: Service\nnmae: a\n", []string{"bad.yaml:2: nmae: unknown field (did you mean \"name\"?)"}},
		{"bad protocol", "kind: Service\nname: a\nspec:\n  protocol: udp\n", []string{"bad.yaml:4: spec.protocol:", "udp"}},
		{"bad name", "kind: Service\nname: Bad_Name\n", []string{"bad.yaml:2: name:", "lowercase"}},
		{"unknown kind", "kind: Gizmo\nname: a\n", []string{"bad.yaml:1: kind: unknown kind \"Gizmo\""}},
		{"missing kind", "name: a\n", []string{"kind: missing"}},
		{"syntax", "kind: Service\nname: [a\n", []string{"bad.yaml:"}},
		{"two errors in one doc", "kind: Intention\nname: x\nspec:\n  source: Bad\n  destination: b\n  action: maybe\n",
			[]string{"bad.yaml:4: spec.source", "bad.yaml:6: spec.action"}},
		{"error in second doc", "kind: Service\nname: ok\n---\nkind: Service\nname: ok2\nspec:\n  port: 70000\n",
			[]string{"bad.yaml:7: spec.port"}},
		{"alias", "kind: Service\nname: &a x\nspec: {description: *a}\n", []string{"aliases"}},
		{"wrong type", "kind: Service\nname: a\nspec:\n  port: eighty\n", []string{"bad.yaml:4"}},
		{"empty", "", []string{"no resources"}},
		{"service: bad dnsNames", "kind: Service\nname: a\nspec:\n  dnsNames: [ok.example.test, \"bad name\", \"*.*.x\"]\n",
			[]string{"bad.yaml:4: spec.dnsNames[1]:", "bad.yaml:4: spec.dnsNames[2]:"}},
		{"gateway: https without certificate", "kind: Gateway\nname: gw\nspec:\n  listeners:\n  - port: 443\n    protocol: https\n    routes: [{service: web}]\n",
			[]string{"bad.yaml:5: spec.listeners[0].tls: missing"}},
		{"gateway: mesh certificate without names", "kind: Gateway\nname: gw\nspec:\n  listeners:\n  - port: 443\n    protocol: https\n    tls: {source: mesh}\n    routes: [{service: web}]\n",
			[]string{"spec.listeners[0].tls.dnsNames: missing: source mesh needs the names"}},
		{"gateway: files with names", "kind: Gateway\nname: gw\nspec:\n  listeners:\n  - port: 443\n    protocol: https\n    tls: {certFile: a.pem, keyFile: a.key, dnsNames: [x.test]}\n    routes: [{service: web}]\n",
			[]string{"spec.listeners[0].tls.dnsNames: the names come from the certificate file"}},
		{"gateway: unknown source", "kind: Gateway\nname: gw\nspec:\n  listeners:\n  - port: 443\n    protocol: https\n    tls: {source: acme, dnsNames: [x.test]}\n    routes: [{service: web}]\n",
			[]string{"spec.listeners[0].tls.source: \"acme\" is not files, mesh or self-signed"}},
		{"gateway: passthrough with routes and a bad health check", "kind: Gateway\nname: gw\nspec:\n  listeners:\n  - port: 443\n    protocol: tls-passthrough\n    healthCheck: http\n    routes: [{service: web}]\n",
			[]string{"a tls-passthrough listener holds no certificate", "spec.listeners[0].healthCheck: \"http\" is not tcp or tls", "spec.listeners[0].targets: missing"}},
		{"gateway: duplicate port and SNI", "kind: Gateway\nname: gw\nspec:\n  listeners:\n  - port: 443\n    protocol: tls-passthrough\n    targets: [{sni: a.test, service: a}, {sni: A.test, service: b}]\n  - port: 443\n    protocol: http\n    routes: [{pathPrefix: nope, service: web}]\n",
			[]string{"spec.listeners[0].targets[1].sni: \"A.test\" is routed twice", "spec.listeners[1].port: 443 is used by another listener", "spec.listeners[1].routes[0].pathPrefix: \"nope\" must start with /"}},
		{"route: unknown field in a rule", "kind: Route\nname: web\nspec:\n  rules:\n  - targets: [{version: v1, weight: 1}]\n  - tagrets: []\n",
			[]string{"bad.yaml:6: spec.rules[1].tagrets: unknown field (did you mean \"targets\"?)"}},
		{"route: bad weight and version", "kind: Route\nname: web\nspec:\n  rules:\n  - targets:\n    - version: v1\n      weight: 90\n    - version: v1\n      weight: -1\n",
			[]string{"bad.yaml:8: spec.rules[0].targets[1].version: \"v1\" is listed twice", "bad.yaml:9: spec.rules[0].targets[1].weight"}},
		{"route: zero weights", "kind: Route\nname: web\nspec:\n  rules:\n  - targets: [{version: v1, weight: 0}]\n", []string{"all weights are 0"}},
		{"route: bad regex, two paths", "kind: Route\nname: web\nspec:\n  rules:\n  - match:\n      pathPrefix: /a\n      pathRegex: \"(\"\n",
			[]string{"bad.yaml:7: spec.rules[0].match.pathRegex", "set at most one of pathPrefix"}},
		{"route: rewrite without prefix", "kind: Route\nname: web\nspec:\n  rules:\n  - prefixRewrite: /x\n", []string{"prefixRewrite: needs match.pathPrefix"}},
		{"route: bad retries and timeout", "kind: Route\nname: web\nspec:\n  rules:\n  - timeout: soon\n    retries: {attempts: 1, on: [5xx, sometimes]}\n",
			[]string{"bad.yaml:5: spec.rules[0].timeout", "spec.rules[0].retries.attempts", "\"sometimes\" is not one of"}},
		{"route: no rules", "kind: Route\nname: web\nspec: {}\n", []string{"spec.rules: missing"}},
		{"intention: action and permissions", "kind: Intention\nname: a.b\nspec:\n  source: a\n  destination: b\n  action: allow\n  permissions: [{action: allow, http: {pathPrefix: /x}}]\n",
			[]string{"set action or permissions, not both"}},
		{"intention: bad permission", "kind: Intention\nname: a.b\nspec:\n  source: a\n  destination: b\n  permissions:\n  - action: maybe\n    http: {pathPrefix: x, methods: [get]}\n",
			[]string{"bad.yaml:7: spec.permissions[0].action", "spec.permissions[0].http.pathPrefix", "spec.permissions[0].http.methods[0]"}},
		{"service: negative limit", "kind: Service\nname: a\nspec:\n  limits: {maxRequests: -1}\n", []string{"bad.yaml:4: spec.limits.maxRequests"}},
		{"service: pending without max", "kind: Service\nname: a\nspec:\n  limits: {maxPendingRequests: 5}\n", []string{"spec.limits.maxPendingRequests: needs maxRequests"}},
		{"gateway: network listener without network", "kind: Gateway\nname: gw\nspec:\n  listeners:\n  - port: 15443\n    protocol: network\n    routes: [{service: web}]\n",
			[]string{"bad.yaml:5: spec.listeners[0].network: missing", "a network listener holds no certificate"}},
		{"gateway: bad network name, network on http", "kind: Gateway\nname: gw\nspec:\n  listeners:\n  - port: 15443\n    protocol: network\n    network: VPC_B\n  - port: 80\n    protocol: http\n    network: b\n    routes: [{service: web}]\n",
			[]string{"spec.listeners[0].network: network name \"VPC_B\"", "spec.listeners[1].network: only a network listener has a network"}},
		{"service: bad locality", "kind: Service\nname: a\nspec:\n  locality: nearest\n", []string{"bad.yaml:4: spec.locality: \"nearest\" is not \"prefer-local\" or \"any\""}},
		{"route: lowercase method", "kind: Route\nname: web\nspec:\n  rules:\n  - match: {methods: [get]}\n", []string{"spec.rules[0].match.methods[0]"}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			res, err := DecodeYAML("bad.yaml", strings.NewReader(tt.in))
			if err == nil {
				t.Fatalf("DecodeYAML succeeded with %d resources, want error", len(res))
			}
			if res != nil {
				t.Errorf("DecodeYAML returned resources with an error; want none (nothing half-applied)")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestResourceJSONRoundTrip(t *testing.T) {
	in := Resource{Kind: KindIntention, Name: "a.b", Intention: &IntentionSpec{Source: "a", Destination: "b", Action: Deny}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"kind":"Intention","name":"a.b","spec":{"source":"a","destination":"b","action":"deny"}}`; string(b) != want {
		t.Errorf("json = %s, want %s", b, want)
	}
	var out Resource
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out.Intention, in.Intention) {
		t.Errorf("round trip = %+v, want %+v", out.Intention, in.Intention)
	}
	if err := json.Unmarshal([]byte(`{"kind":"Service","name":"a","spec":{"bogus":1}}`), &out); err == nil {
		t.Error("unknown JSON field accepted")
	}
}

func FuzzDecodeYAML(f *testing.F) {
	f.Add("kind: Service\nname: a\nspec:\n  protocol: http\n")
	f.Add("kind: Intention\nname: a.b\nspec: {source: '*', destination: b, action: deny}\n")
	f.Add("kind: Mesh\nname: default\n---\n")
	// A canary's figures must survive JSON: NaN would not.
	f.Add("kind: Route\nname: a\nspec:\n  rules:\n  - targets: [{version: v1, weight: 100}, {version: v2, weight: 0}]\n    canary: {version: v2, steps: [10, 100], interval: 1m, minSuccessRate: 99.5, maxP99: 500ms}\n")
	f.Add("kind: Route\nname: a\nspec:\n  rules:\n  - targets: [{version: v1, weight: 1}, {version: v2, weight: 0}]\n    canary: {version: v2, steps: [100], interval: 2s, minSuccessRate: .nan, maxP99: 1s}\n")
	f.Fuzz(func(t *testing.T, in string) {
		res, err := DecodeYAML("f.yaml", strings.NewReader(in))
		if err != nil {
			return
		}
		for i := range res {
			if err := res[i].Validate(); err != nil {
				t.Fatalf("decoded resource fails Validate: %v", err)
			}
			b, err := json.Marshal(res[i])
			if err != nil {
				t.Fatalf("marshal decoded resource: %v", err)
			}
			var back Resource
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("unmarshal %s: %v", b, err)
			}
		}
	})
}

func TestDecodeRoute(t *testing.T) {
	in := `kind: Route
name: hello-backend
spec:
  rules:
  - name: canary
    match:
      pathPrefix: /api/
      methods: [GET, HEAD]
      headers: [{name: x-canary, exact: "yes"}]
    prefixRewrite: /
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, on: [5xx, connect-failure]}
    targets:
    - {version: v1, weight: 90}
    - {version: v2, weight: 10}
`
	res, err := DecodeYAML("route.yaml", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	r := res[0].Route
	if r == nil || len(r.Rules) != 1 {
		t.Fatalf("route = %+v", r)
	}
	rule := r.Rules[0]
	if rule.Match.Headers[0].Exact != "yes" || rule.Targets[1].Weight != 10 || rule.Retries.Attempts != 3 || rule.PrefixRewrite != "/" {
		t.Errorf("rule decoded as %+v", rule)
	}
	b, err := json.Marshal(res[0])
	if err != nil {
		t.Fatal(err)
	}
	var back Resource
	if err := json.Unmarshal(b, &back); err != nil || back.Route == nil || back.Route.Rules[0].Targets[0].Version != "v1" {
		t.Fatalf("JSON round trip: %v, %+v", err, back.Route)
	}
}
