//go:build linux

package integration

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// The example pipeline against a real control plane: it validates,
// writes every output, registers each service with exactly the listed
// backends, and a second version joins the Route at weight 0.
func TestExamplePipeline(t *testing.T) {
	s := startServer(t)
	run := func(version string) string {
		out := t.TempDir()
		cmd := exec.Command("sh", "../examples/pipeline/pipeline.sh", version)
		cmd.Env = append(append(os.Environ(), s.env()...), "TRELLIS="+bin, "OUT="+out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pipeline: %v\n%s", err, b)
		}
		return out
	}
	out := run("3f9c2a1b")
	for _, svc := range []string{"hello-web", "hello-backend"} {
		for _, f := range []string{"ecs", "cloudformation", "kubernetes", "compose"} {
			if st, err := os.Stat(filepath.Join(out, svc+"."+f)); err != nil || st.Size() == 0 {
				t.Errorf("%s.%s: %v", svc, f, err)
			}
		}
	}
	got := s.mustCLI(t, "get", "intentions")
	if !strings.Contains(got, "hello-web") || !strings.Contains(got, "hello-backend") {
		t.Errorf("intentions after the pipeline:\n%s", got)
	}
	if strings.Count(got, "allow") != 1 {
		t.Errorf("want exactly one allow intention (hello-web -> hello-backend):\n%s", got)
	}
	if got := s.mustCLI(t, "get", "services"); !strings.Contains(got, "hello-web") || !strings.Contains(got, "hello-backend") {
		t.Errorf("services after the pipeline:\n%s", got)
	}
	targets := func() []v1.RouteTarget {
		var r struct {
			Kind, Name string
			Spec       v1.RouteSpec
		}
		if err := json.Unmarshal([]byte(s.mustCLI(t, "get", "route", "hello-web", "-o", "json")), &r); err != nil {
			t.Fatal(err)
		}
		if r.Kind != v1.KindRoute || r.Name != "hello-web" || len(r.Spec.Rules) != 1 {
			t.Fatalf("route %+v", r)
		}
		return r.Spec.Rules[0].Targets
	}
	if got := targets(); !reflect.DeepEqual(got, []v1.RouteTarget{{Version: "3f9c2a1b", Weight: 100}}) {
		t.Errorf("first version: route targets %+v", got)
	}
	run("4e5d6c7b")
	if got := targets(); !reflect.DeepEqual(got, []v1.RouteTarget{{Version: "3f9c2a1b", Weight: 100}, {Version: "4e5d6c7b", Weight: 0}}) {
		t.Errorf("second version: route targets %+v", got)
	}
}

// Exit codes: 0 valid, 1 invalid (and nothing written), 2 usage or I/O;
// --output json gives the diagnostics as data.
func TestInjectExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(bad, "Task:\n  Family: hello-web\n  Memroy: 512\nAppContainer:\n  Image: nginx:latest\n  Port: 8080\n")
	out := filepath.Join(dir, "out.json")
	pol := "../examples/pipeline/policy.yaml"
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inject", "validate", "-f", "../examples/pipeline/hello-web.yaml", "--policy", pol, "--version", "abc12345"}, 0, "valid"},
		{[]string{"inject", "ecs", "-f", bad, "--policy", pol, "--version", "abc12345", "-o", out}, 1, `bad.yaml:3:3: Task.Memroy: unknown field`},
		{[]string{"inject", "validate", "-f", bad, "--policy", pol, "--version", "abc12345", "--output", "json"}, 1, `"field": "AppContainer.Image"`},
		{[]string{"inject", "ecs", "-f", bad, "--policy", pol, "--version", "Not A Version"}, 2, "--version"},
		{[]string{"inject", "ecs", "-f", filepath.Join(dir, "missing.yaml"), "--policy", pol, "--version", "v1"}, 2, "no such file"},
		{[]string{"inject", "kubernetes-typo", "-f", bad}, 2, `unknown "kubernetes-typo"`},
	} {
		got, code := runCLI(t, nil, tc.args...)
		if code != tc.code || !strings.Contains(got, tc.want) {
			t.Errorf("trellis %s: exit %d, want %d with %q:\n%s", strings.Join(tc.args, " "), code, tc.code, tc.want, got)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("invalid input wrote %s (%v)", out, err)
	}
}

// trellis inject webhook: a real TLS server, an AdmissionReview in, a
// JSON patch out; SIGTERM stops it cleanly. webhook-config describes it.
func TestInjectWebhookCommand(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeSelfSigned(t, certFile, keyFile, "127.0.0.1")
	addr, _ := loopAddr(t)
	p := start(t, "webhook", nil, "inject", "webhook", "--policy", "../examples/pipeline/policy.yaml",
		"--cert-file", certFile, "--key-file", keyFile, "--listen", addr)

	caPEM, _ := os.ReadFile(certFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	review, err := os.ReadFile("../internal/inject/testdata/k8s/review-labels.json")
	if err != nil {
		t.Fatal(err)
	}
	var body []byte
	trellistest.Eventually(t, 10*time.Second, "the webhook answers", func() error {
		resp, err := client.Post("https://"+addr+"/inject", "application/json", bytes.NewReader(review))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err = io.ReadAll(resp.Body)
		return err
	})
	var got struct {
		Response struct {
			UID       string
			Allowed   bool
			PatchType string
			Patch     []byte
		}
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	r := got.Response
	if r.UID != "7c1f6a2e-0001" || !r.Allowed || r.PatchType != "JSONPatch" || !bytes.Contains(r.Patch, []byte(`"trellis-proxy"`)) {
		t.Fatalf("response %s", body)
	}
	// Only TLS 1.2 and later.
	old := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS11}}}
	if _, err := old.Get("https://" + addr + "/healthz"); err == nil {
		t.Errorf("TLS 1.1 accepted")
	}
	p.kill(syscall.SIGTERM)
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit %d after SIGTERM:\n%s", code, p.logText())
	}

	out, code := runCLI(t, nil, "inject", "webhook-config", "--ca-file", certFile, "--url", "https://"+addr+"/inject")
	if code != 0 || !strings.Contains(out, "kind: MutatingWebhookConfiguration") || !strings.Contains(out, "failurePolicy: Fail") ||
		!strings.Contains(out, "trellis.dev/inject: enabled") {
		t.Errorf("webhook-config: exit %d\n%s", code, out)
	}
	if out, code := runCLI(t, nil, "inject", "webhook", "--policy", "../examples/pipeline/policy.yaml"); code != 2 || !strings.Contains(out, "--cert-file") {
		t.Errorf("webhook without a certificate: exit %d: %s", code, out)
	}
}

// trellis inject kubernetes on a file of Kubernetes objects.
func TestInjectKubernetesObjects(t *testing.T) {
	out, code := runCLI(t, nil, "inject", "kubernetes", "-f", "../internal/inject/testdata/k8s/deploy.yaml",
		"--policy", "../examples/pipeline/policy.yaml", "--version", "3f9c2a1b")
	if code != 0 || strings.Count(out, "name: trellis-proxy") != 2 || !strings.Contains(out, "kind: ConfigMap") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(bad, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n  annotations: {trellis.dev/app-port: \"x\"}\nspec:\n  containers: [{name: a, image: a:1}]\n")
	o := filepath.Join(dir, "out.yaml")
	out, code = runCLI(t, nil, "inject", "kubernetes", "-f", bad, "--policy", "../examples/pipeline/policy.yaml", "-o", o)
	if code != 1 || !strings.Contains(out, "bad.yaml: document 1 (Pod x): metadata.annotations[trellis.dev/app-port]") ||
		!strings.Contains(out, "bad.yaml: document 1 (Pod x): metadata.annotations[trellis.dev/service]") {
		t.Errorf("exit %d:\n%s", code, out)
	}
	if _, err := os.Stat(o); !os.IsNotExist(err) {
		t.Errorf("invalid input wrote %s", o)
	}
}
