package inject

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	jsonpatch "github.com/evanphx/json-patch/v5"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Offline injection: Kubernetes objects in a YAML stream, as a pipeline
// holds them before kubectl apply, with the sidecar added to every
// workload's pod template.

// maxObjects bounds the stream read, as the manifest decoder does.
const maxObjects = 16 << 20

// templateAt is where each workload kind keeps its pod template.
var templateAt = map[string]string{
	"Pod":                   "",
	"Deployment":            "/spec/template",
	"StatefulSet":           "/spec/template",
	"DaemonSet":             "/spec/template",
	"ReplicaSet":            "/spec/template",
	"ReplicationController": "/spec/template",
	"Job":                   "/spec/template",
	"CronJob":               "/spec/jobTemplate/spec/template",
}

// IsKubernetes reports whether a YAML stream holds Kubernetes objects (its
// first document has apiVersion and kind) rather than a manifest.
func IsKubernetes(data []byte) bool {
	doc, err := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data))).Read()
	if err != nil {
		return false
	}
	var tm metav1.TypeMeta
	return yaml.Unmarshal(doc, &tm) == nil && tm.APIVersion != "" && tm.Kind != ""
}

// InjectObjects injects the sidecar into every workload of a YAML stream
// and returns the stream. Other objects, and workloads that opt out or
// have the sidecar already, are kept byte for byte. Every problem in every
// document is reported, and then nothing is returned.
func (in *Injector) InjectObjects(file string, r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxObjects+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(data) > maxObjects {
		return nil, fmt.Errorf("%s: larger than %d MiB", file, maxObjects>>20)
	}
	rd := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out bytes.Buffer
	var errs []error
	for n := 1; ; n++ {
		doc, err := rd.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, n, err)
		}
		res, what, err := in.injectObject(doc)
		if err != nil {
			// One line per problem, each saying where.
			for _, line := range strings.Split(err.Error(), "\n") {
				errs = append(errs, fmt.Errorf("%s: document %d%s: %s", file, n, what, line))
			}
			continue
		}
		if len(bytes.TrimSpace(res)) == 0 {
			continue
		}
		if out.Len() > 0 {
			out.WriteString("---\n")
		}
		out.Write(bytes.TrimRight(res, "\n"))
		out.WriteByte('\n')
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// injectObject returns one document, injected if it is a workload, and
// what the object is (" (Deployment web)"), for messages.
func (in *Injector) injectObject(doc []byte) ([]byte, string, error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, "", err
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return doc, "", nil // comments only
	}
	var head struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return nil, "", fmt.Errorf("not a Kubernetes object: %w", err)
	}
	at, workload := templateAt[head.Kind]
	if !workload {
		return doc, "", nil
	}
	what := fmt.Sprintf(" (%s %s)", head.Kind, head.Metadata.Name)
	tmpl, err := pointerGet(js, at)
	if err != nil {
		return nil, what, err
	}
	var pod corev1.PodTemplateSpec
	if err := json.Unmarshal(tmpl, &pod); err != nil {
		return nil, what, fmt.Errorf("pod template: %w", err)
	}
	ops, err := in.PodPatch(pod.ObjectMeta, pod.Spec, at, fieldOf(at))
	if err != nil || ops == nil {
		return doc, what, err
	}
	patched, err := applyPatch(js, ops)
	if err != nil {
		return nil, what, err
	}
	out, err := yaml.JSONToYAML(patched)
	return out, what, err
}

// withoutStatus is an object as YAML without its status, which is the
// cluster's to write.
func withoutStatus(obj any) ([]byte, error) {
	js, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, err
	}
	delete(m, "status")
	return yaml.Marshal(m)
}

// applyPatch applies a JSON patch with the library the API server uses.
func applyPatch(doc []byte, ops []PatchOp) ([]byte, error) {
	b, err := json.Marshal(ops)
	if err != nil {
		return nil, err
	}
	p, err := jsonpatch.DecodePatch(b)
	if err != nil {
		return nil, err
	}
	return p.Apply(doc)
}

// fieldOf is a JSON pointer of object keys as a field path:
// /spec/template is spec.template.
func fieldOf(at string) string {
	return strings.ReplaceAll(strings.TrimPrefix(at, "/"), "/", ".")
}

// pointerGet returns the value at a JSON pointer made of object keys.
func pointerGet(doc []byte, at string) ([]byte, error) {
	if at == "" {
		return doc, nil
	}
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		return nil, err
	}
	for _, key := range strings.Split(strings.TrimPrefix(at, "/"), "/") {
		m, ok := v.(map[string]any)
		if !ok || m[key] == nil {
			return nil, fmt.Errorf("no %s", fieldOf(at))
		}
		v = m[key]
	}
	return json.Marshal(v)
}

// Kubernetes is the plan as Kubernetes objects: a Deployment named
// <service>-<version>, so that versions run side by side, with the sidecar
// injected by the same code as the webhook's, and a HorizontalPodAutoscaler
// with the policy's scaling. The manifest's secrets are ARNs, which mean
// nothing to Kubernetes: each variable is read from the key of its name in
// the Secret <service>-secrets instead.
func (p *Plan) Kubernetes() ([]byte, error) {
	sc := p.Policy.Sidecar
	labels := map[string]string{"app.kubernetes.io/name": p.Service, "app.kubernetes.io/version": p.Version}
	annotations := map[string]string{
		AnnotationService: p.Service,
		AnnotationVersion: p.Version,
		AnnotationAppPort: strconv.Itoa(p.App.Port),
	}
	if len(p.Backends) > 0 {
		var names []string
		for _, b := range p.Backends {
			names = append(names, b.Service)
		}
		annotations[AnnotationBackends] = strings.Join(names, ",")
	}
	if p.App.HealthCheckPath != "" {
		annotations[AnnotationHealthPath] = p.App.HealthCheckPath
	}
	var env []corev1.EnvVar
	for _, kv := range p.App.envSorted() {
		env = append(env, corev1.EnvVar{Name: kv.Name, Value: kv.Value})
	}
	for _, s := range p.App.secretsSorted() {
		env = append(env, corev1.EnvVar{Name: s.Name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: p.Service + "-secrets"}, Key: s.Name,
		}}})
	}
	replicas := int32(p.Policy.Scaling.Min)
	dep := appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: annotations},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name:    p.Service,
					Image:   p.App.Image,
					Command: p.App.Command,
					Ports:   []corev1.ContainerPort{{Name: "app", ContainerPort: int32(p.App.Port), Protocol: corev1.ProtocolTCP}},
					Env:     env,
					// The task's size less the sidecar's.
					Resources: resources(p.Cpu-sc.Cpu, p.Memory-sc.Memory),
				}}},
			},
		},
	}
	target := int32(p.Policy.Scaling.CPUTarget)
	minReplicas := int32(p.Policy.Scaling.Min)
	hpa := autoscalingv2.HorizontalPodAutoscaler{
		TypeMeta:   metav1.TypeMeta{APIVersion: "autoscaling/v2", Kind: "HorizontalPodAutoscaler"},
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Labels: labels},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: p.Name},
			MinReplicas:    &minReplicas,
			MaxReplicas:    int32(p.Policy.Scaling.Max),
			Metrics: []autoscalingv2.MetricSpec{{
				Type: autoscalingv2.ResourceMetricSourceType,
				Resource: &autoscalingv2.ResourceMetricSource{
					Name:   corev1.ResourceCPU,
					Target: autoscalingv2.MetricTarget{Type: autoscalingv2.UtilizationMetricType, AverageUtilization: &target},
				},
			}},
		},
	}
	var stream bytes.Buffer
	for i, obj := range []any{dep, hpa} {
		b, err := withoutStatus(obj)
		if err != nil {
			return nil, err
		}
		if i > 0 {
			stream.WriteString("---\n")
		}
		stream.Write(b)
	}
	return (&Injector{Policy: p.Policy}).InjectObjects(p.Name, &stream)
}
