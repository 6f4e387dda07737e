package kubernetes

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	k8sjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// decoder decodes YAML strictly into the k8s.io/api types of the kinds
// these manifests may hold: an unknown or duplicate field, a wrong type
// or an unregistered apiVersion/kind fails, as the API server's
// fieldValidation=Strict (kubectl apply's default) would.
func decoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, networkingv1.AddToScheme,
		rbacv1.AddToScheme, admissionregistrationv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return k8sjson.NewSerializerWithOptions(k8sjson.DefaultMetaFactory, scheme, scheme,
		k8sjson.SerializerOptions{Yaml: true, Strict: true})
}

// object is one decoded document and where it came from.
type object struct {
	where string
	obj   runtime.Object
}

// decodeAll decodes every document of r strictly.
func decodeAll(dec runtime.Decoder, name string, r io.Reader) ([]object, error) {
	yr := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var objs []object
	var errs []error
	for i := 1; ; i++ {
		doc, err := yr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		where := fmt.Sprintf("%s document %d", name, i)
		obj, _, err := dec.Decode(doc, nil, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		objs = append(objs, object{where, obj})
	}
	return objs, errors.Join(errs...)
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for line := range bytes.Lines(doc) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			b.Write(line)
		}
	}
	return b.Bytes()
}

// The manifests decode strictly into the Kubernetes API's types, and
// hang together: selectors select their pods, Services' target ports
// exist, everything is in the one namespace, and every trellis
// container runs as the images' user 65532, unprivileged and read-only.
func TestManifests(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	dec := decoder(t)
	var objs []object
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		o, err := decodeAll(dec, f, bytes.NewReader(b))
		if err != nil {
			t.Error(err)
		}
		objs = append(objs, o...)
	}

	type pods struct {
		where    string
		template corev1.PodTemplateSpec
	}
	var templates []pods
	namespaces := map[string]bool{}
	for _, o := range objs {
		switch obj := o.obj.(type) {
		case *corev1.Namespace:
			namespaces[obj.Name] = true
		case *appsv1.Deployment:
			checkSelector(t, o.where, obj.Spec.Selector, obj.Spec.Template.Labels)
			templates = append(templates, pods{o.where, obj.Spec.Template})
		case *appsv1.StatefulSet:
			checkSelector(t, o.where, obj.Spec.Selector, obj.Spec.Template.Labels)
			templates = append(templates, pods{o.where, obj.Spec.Template})
		}
	}
	selects := func(sel labels.Selector) []pods {
		var out []pods
		for _, p := range templates {
			if sel.Matches(labels.Set(p.template.Labels)) {
				out = append(out, p)
			}
		}
		return out
	}
	for _, o := range objs {
		meta, ok := o.obj.(metav1.Object)
		if !ok {
			t.Fatalf("%s: %T has no metadata", o.where, o.obj)
		}
		if _, isNS := o.obj.(*corev1.Namespace); !isNS && !namespaces[meta.GetNamespace()] {
			t.Errorf("%s: %s in namespace %q, which no manifest makes", o.where, meta.GetName(), meta.GetNamespace())
		}
		switch obj := o.obj.(type) {
		case *corev1.Service:
			sel := labels.SelectorFromSet(obj.Spec.Selector)
			matched := selects(sel)
			if len(obj.Spec.Selector) == 0 || len(matched) == 0 {
				t.Errorf("%s: Service %s selects no pods of these manifests", o.where, obj.Name)
			}
			for _, port := range obj.Spec.Ports {
				target := port.TargetPort
				if target.String() == "0" { // unset: the API server defaults it to the port
					target.IntVal = port.Port
				}
				for _, p := range matched {
					if !hasPort(p.template.Spec, target.String(), target.IntValue()) {
						t.Errorf("%s: Service %s port %s: target port %s is not a container port of %s", o.where, obj.Name, port.Name, target.String(), p.where)
					}
				}
			}
		case *policyv1.PodDisruptionBudget:
			sel, err := metav1.LabelSelectorAsSelector(obj.Spec.Selector)
			if err != nil || len(selects(sel)) == 0 {
				t.Errorf("%s: PodDisruptionBudget %s selects no pods of these manifests (%v)", o.where, obj.Name, err)
			}
		}
	}
	for _, p := range templates {
		checkTrellisPod(t, p.where, p.template.Spec)
	}
	for _, kind := range []string{"Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount"} {
		found := false
		for _, o := range objs {
			found = found || o.obj.GetObjectKind().GroupVersionKind().Kind == kind
		}
		if !found {
			t.Errorf("no %s in the manifests", kind)
		}
	}
}

func checkSelector(t *testing.T, where string, sel *metav1.LabelSelector, podLabels map[string]string) {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() || !s.Matches(labels.Set(podLabels)) {
		t.Errorf("%s: selector %v does not select its own pods' labels %v (%v)", where, sel, podLabels, err)
	}
}

func hasPort(spec corev1.PodSpec, name string, number int) bool {
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		for _, p := range c.Ports {
			if (p.Name != "" && p.Name == name) || (number != 0 && int(p.ContainerPort) == number) {
				return true
			}
		}
	}
	return false
}

// checkTrellisPod: a pod running a trellis image runs as 65532, the
// images' user, non-root, with no privilege escalation, no capabilities
// and a read-only root filesystem.
func checkTrellisPod(t *testing.T, where string, spec corev1.PodSpec) {
	t.Helper()
	for _, c := range spec.Containers {
		if !strings.Contains(c.Image, "/trellis-") {
			continue
		}
		if !strings.HasPrefix(c.Image, "REGISTRY/trellis-server:") && !strings.HasPrefix(c.Image, "REGISTRY/trellis-sidecar:") {
			t.Errorf("%s container %s: image %s, want REGISTRY/trellis-server or -sidecar (tools/image)", where, c.Name, c.Image)
		}
		psc, sc := spec.SecurityContext, c.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
			t.Errorf("%s: pod securityContext %+v, want runAsNonRoot and runAsUser 65532", where, psc)
		}
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
			t.Errorf("%s container %s: securityContext %+v, want no privilege escalation, a read-only root and capabilities drop [ALL]", where, c.Name, sc)
		}
	}
}

// Strict decoding refuses what the API server would: each bad document
// below fails, naming the problem.
func TestDecodeStrict(t *testing.T) {
	dec := decoder(t)
	for _, tc := range []struct{ name, doc, want string }{
		{"unknown field", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  selectr: {app: a}\n", `unknown field "spec.selectr"`},
		{"duplicate field", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nmetadata: {name: b}\n", `key "metadata" already set`},
		{"wrong type", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\nspec: {replicas: two}\n", "replicas"},
		{"unknown kind", "apiVersion: apps/v1\nkind: Deploymnet\nmetadata: {name: a}\n", "no kind"},
		{"retired version", "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata: {name: a}\n", "policy/v1beta1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeAll(dec, "doc.yaml", strings.NewReader(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
		})
	}
	// And a good one passes.
	if _, err := decodeAll(dec, "ok.yaml", strings.NewReader("# c\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  selector: {app: a}\n")); err != nil {
		t.Errorf("good document: %v", err)
	}
}
