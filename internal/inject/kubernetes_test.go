package inject

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"gopkg.in/yaml.v3"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	sigsyaml "sigs.k8s.io/yaml"
)

func testInjector(t *testing.T) *Injector {
	t.Helper()
	f, err := os.Open(pipeline + "policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pol, ds := LoadPolicy("policy.yaml", f)
	if ds != nil {
		t.Fatal(ds)
	}
	return &Injector{Policy: pol}
}

// yamlDocs decodes every document of a YAML stream, for golden
// comparison of multi-document outputs.
func yamlDocs(b []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []any
	for {
		var d any
		if err := dec.Decode(&d); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		docs = append(docs, d)
	}
	*v.(*any) = docs
	return nil
}

// post sends an AdmissionReview to the webhook over TLS and returns the
// response.
func post(t *testing.T, srv *httptest.Server, body []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	resp, err := srv.Client().Post(srv.URL+WebhookPath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %s: %s", resp.Status, b)
	}
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&review); err != nil {
		t.Fatal(err)
	}
	if review.Response == nil || review.APIVersion != "admission.k8s.io/v1" || review.Kind != "AdmissionReview" {
		t.Fatalf("answer %+v", review)
	}
	return review.Response
}

// The webhook over real TLS: each AdmissionReview fixture in, its answer
// out. A patch is applied with the library the API server uses and the
// pod compared with its golden file; the patched pod sent again comes
// back unchanged.
func TestWebhookReviews(t *testing.T) {
	srv := httptest.NewTLSServer(&Webhook{Injector: testInjector(t)})
	defer srv.Close()
	for _, tc := range []struct {
		name string
		want string // patch, none or deny
	}{
		{"labels", "patch"},
		{"annotated", "patch"},
		{"opted-out", "none"},
		{"update", "none"},
		{"bad-annotations", "deny"},
		{"collisions", "deny"},
		{"unnamed", "deny"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata/k8s", "review-"+tc.name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var review admissionv1.AdmissionReview
			if err := json.Unmarshal(in, &review); err != nil {
				t.Fatal(err)
			}
			resp := post(t, srv, in)
			if resp.UID != review.Request.UID {
				t.Errorf("uid %q, want %q", resp.UID, review.Request.UID)
			}
			switch tc.want {
			case "none":
				if !resp.Allowed || resp.Patch != nil {
					t.Fatalf("allowed %v, patch %s: want allowed untouched", resp.Allowed, resp.Patch)
				}
			case "deny":
				if resp.Allowed || resp.Patch != nil || resp.Result == nil {
					t.Fatalf("allowed %v, patch %s: want a denial", resp.Allowed, resp.Patch)
				}
				golden(t, "k8s/review-"+tc.name+".denied", []byte(resp.Result.Message), func(b []byte, v any) error {
					*v.(*any) = string(b)
					return nil
				})
			case "patch":
				if !resp.Allowed || resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
					t.Fatalf("allowed %v, patch type %v", resp.Allowed, resp.PatchType)
				}
				p, err := jsonpatch.DecodePatch(resp.Patch)
				if err != nil {
					t.Fatalf("patch %s: %v", resp.Patch, err)
				}
				pod, err := p.Apply(review.Request.Object.Raw)
				if err != nil {
					t.Fatalf("patch %s does not apply: %v", resp.Patch, err)
				}
				var pretty bytes.Buffer
				json.Indent(&pretty, pod, "", "  ")
				golden(t, "k8s/review-"+tc.name+".pod.json", pretty.Bytes(), json.Unmarshal)
				checkInjectedPod(t, pod)

				// Again: nothing changes.
				review.Request.Object.Raw = pod
				again, _ := json.Marshal(review)
				if resp := post(t, srv, again); !resp.Allowed || resp.Patch != nil {
					t.Errorf("second injection: allowed %v, patch %s", resp.Allowed, resp.Patch)
				}
			}
		})
	}
}

// checkInjectedPod: the invariants of any injected pod, beyond its golden
// file: the sidecar is a native sidecar that runs as the policy's UID and
// starts first, and every app container knows its service.
func checkInjectedPod(t *testing.T, b []byte) {
	t.Helper()
	var pod corev1.Pod
	if err := json.Unmarshal(b, &pod); err != nil {
		t.Fatal(err)
	}
	sc := pod.Spec.InitContainers[0]
	if sc.Name != SidecarName || sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("first init container %q is not a native sidecar", sc.Name)
	}
	if sc.SecurityContext == nil || *sc.SecurityContext.RunAsUser != DefaultUID || !*sc.SecurityContext.RunAsNonRoot {
		t.Errorf("sidecar security context %+v", sc.SecurityContext)
	}
	if sc.StartupProbe == nil || sc.StartupProbe.Exec.Command[0] != "/trellis" {
		t.Errorf("sidecar startup probe %+v", sc.StartupProbe)
	}
	for _, c := range pod.Spec.Containers {
		found := false
		for _, e := range c.Env {
			found = found || e.Name == "TRELLIS_SERVICE"
		}
		if !found {
			t.Errorf("container %s lacks TRELLIS_SERVICE", c.Name)
		}
	}
	if pod.Annotations[AnnotationInjected] == "" {
		t.Errorf("no %s annotation", AnnotationInjected)
	}
}

func TestWebhookRefusesNonReviews(t *testing.T) {
	srv := httptest.NewTLSServer(&Webhook{Injector: testInjector(t)})
	defer srv.Close()
	for _, tc := range []struct {
		ctype, body string
		code        int
	}{
		{"text/plain", `{}`, http.StatusUnsupportedMediaType},
		{"application/json", `{"request":`, http.StatusBadRequest},
		{"application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, http.StatusBadRequest},
		{"application/json", `"` + strings.Repeat("a", maxReview) + `"`, http.StatusRequestEntityTooLarge},
	} {
		resp, err := srv.Client().Post(srv.URL+WebhookPath, tc.ctype, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("%s %.40q: %s, want %d", tc.ctype, tc.body, resp.Status, tc.code)
		}
	}
}

// Offline: every workload of a stream gets the sidecar, the rest is kept
// byte for byte, and a second pass changes nothing.
func TestInjectObjects(t *testing.T) {
	in := testInjector(t)
	in.Version = "3f9c2a1b"
	src, err := os.ReadFile("testdata/k8s/deploy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := in.InjectObjects("deploy.yaml", bytes.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "k8s/deploy.injected.yaml", out, yamlDocs)
	for _, kept := range []string{"kind: Service\nmetadata:\n  name: hello-web\n", "annotations: {trellis.dev/inject: \"false\"}", "kind: ConfigMap"} {
		if !strings.Contains(string(out), kept) {
			t.Errorf("output lost %q verbatim", kept)
		}
	}
	if n := strings.Count(string(out), "name: "+SidecarName); n != 2 {
		t.Errorf("%d sidecars, want 2 (the Deployment and the CronJob)", n)
	}
	again, err := in.InjectObjects("deploy.injected.yaml", bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, out) {
		t.Errorf("a second injection changed the output:\n%s", again)
	}
}

// A bad workload fails the whole stream, naming the document, the object
// and the field.
func TestInjectObjectsRefuses(t *testing.T) {
	src := `apiVersion: v1
kind: ConfigMap
metadata: {name: fine}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata:
      labels: {app: web}
      annotations: {trellis.dev/app-port: "80a"}
    spec:
      containers: [{name: web, image: web:1}]
`
	out, err := testInjector(t).InjectObjects("bad.yaml", strings.NewReader(src))
	if out != nil || err == nil {
		t.Fatalf("out %q, err %v", out, err)
	}
	want := `bad.yaml: document 2 (Deployment web): spec.template.metadata.annotations[trellis.dev/app-port]: "80a" is not a port in 1-65535`
	if err.Error() != want {
		t.Errorf("error\n%s\nwant\n%s", err, want)
	}
}

// The manifest's Kubernetes output is what the offline injection makes
// of it: injecting it again changes nothing.
func TestKubernetesOutputIsInjected(t *testing.T) {
	plan, ds := load(t, pipeline+"hello-web.yaml", pipeline+"policy.yaml", "3f9c2a1b", "")
	if ds != nil {
		t.Fatal(ds)
	}
	out, err := plan.Kubernetes()
	if err != nil {
		t.Fatal(err)
	}
	again, err := testInjector(t).InjectObjects("k8s", bytes.NewReader(out))
	if err != nil || !bytes.Equal(again, out) {
		t.Fatalf("reinjection: %v\n%s", err, again)
	}
}

func TestWebhookConfiguration(t *testing.T) {
	c := WebhookConfig{Service: "trellis-injector", Namespace: "trellis-system", CABundle: []byte("-----BEGIN CERTIFICATE-----\n")}
	cfg, err := c.Configuration()
	if err != nil {
		t.Fatal(err)
	}
	b, err := sigsyaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var back admissionregistrationv1.MutatingWebhookConfiguration
	if err := sigsyaml.UnmarshalStrict(b, &back); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	wh := back.Webhooks[0]
	if *wh.FailurePolicy != admissionregistrationv1.Fail || *wh.SideEffects != admissionregistrationv1.SideEffectClassNone {
		t.Errorf("failure policy %v, side effects %v", *wh.FailurePolicy, *wh.SideEffects)
	}
	if wh.NamespaceSelector.MatchLabels[NamespaceLabel] != "enabled" {
		t.Errorf("namespace selector %+v", wh.NamespaceSelector)
	}
	if s := wh.ClientConfig.Service; s == nil || *s.Path != WebhookPath || s.Name != "trellis-injector" {
		t.Errorf("client config %+v", wh.ClientConfig)
	}
	if r := wh.Rules[0]; r.Operations[0] != admissionregistrationv1.Create || r.Resources[0] != "pods" {
		t.Errorf("rules %+v", wh.Rules)
	}
	c.FailOpen = true
	if cfg, _ := c.Configuration(); *cfg.Webhooks[0].FailurePolicy != admissionregistrationv1.Ignore {
		t.Errorf("--fail-open: %v", *cfg.Webhooks[0].FailurePolicy)
	}
	for _, bad := range []WebhookConfig{{Service: "s", Namespace: "n"}, {CABundle: []byte("x")}, {Service: "s", Namespace: "n", URL: "https://x", CABundle: []byte("x")}} {
		if _, err := bad.Configuration(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
