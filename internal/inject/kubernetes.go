package inject

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// The Kubernetes injection. One function decides what a pod gets, as a
// JSON patch (RFC 6902) on the pod; the admission webhook sends that patch
// to the API server, and the offline command applies it to the pod
// template of each workload in a file. A pod says what it is in
// annotations (or the usual labels); the policy says what the sidecar is.
//
// The sidecar is a native sidecar (an init container that keeps running,
// Kubernetes 1.29 and later): the app containers start only once its
// startup probe passes, as an ECS app waits for its proxy to be HEALTHY.

// The annotations a pod may carry, and the namespace label of the webhook.
const (
	// AnnotationInject "false" keeps a pod out of the mesh.
	AnnotationInject = "trellis.dev/inject"
	// AnnotationService is the mesh service; default the label
	// app.kubernetes.io/name, then app.
	AnnotationService = "trellis.dev/service"
	// AnnotationVersion is the version; default the label
	// app.kubernetes.io/version.
	AnnotationVersion = "trellis.dev/version"
	// AnnotationAppPort is the port the app listens on; default the only
	// container port the pod declares.
	AnnotationAppPort = "trellis.dev/app-port"
	// AnnotationBackends lists the services the pod may call, comma
	// separated; each gets a local upstream listener.
	AnnotationBackends = "trellis.dev/backends"
	// AnnotationHealthPath is an HTTP path on the app the sidecar checks.
	AnnotationHealthPath = "trellis.dev/health-path"
	// AnnotationInjected is set by the injection, to the sidecar's image.
	AnnotationInjected = "trellis.dev/injected"
	// NamespaceLabel "enabled" opts a namespace in to the webhook.
	NamespaceLabel = "trellis.dev/inject"
)

// PatchOp is one operation of a JSON patch.
type PatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// Injector injects the sidecar into pods by a policy.
type Injector struct {
	Policy PolicySpec
	// Version is the version of pods that give none (offline, --version).
	Version string
}

// FieldError is a pod's setting that is wrong, with the field at fault.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// PodPatch returns the patch that injects the sidecar into a pod (or pod
// template) with meta and spec; at is the JSON pointer of the pod within
// the document patched ("" for a pod, "/spec/template" for a Deployment)
// and field its field path ("" or "spec.template"), for messages. The patch is nil when the pod
// opts out or is injected already: injecting twice changes nothing. The
// error joins a FieldError for each wrong setting.
func (in *Injector) PodPatch(meta metav1.ObjectMeta, spec corev1.PodSpec, at, field string) ([]PatchOp, error) {
	if injected(spec) {
		return nil, nil
	}
	w, skip, err := in.settings(meta, spec, field)
	if skip {
		return nil, nil
	}
	var dnsOps []PatchOp
	var dnsErr error
	if in.Policy.DNS.Enabled {
		w.DNSListen, w.DNSUpstream = resolverDNS, in.Policy.DNS.Upstream
		dnsOps, dnsErr = in.dnsPatch(meta, spec, at, field)
	}
	env, envErr := in.appEnv(w, spec, field)
	if err := errors.Join(err, envErr, dnsErr); err != nil {
		return nil, err
	}

	var ops []PatchOp
	add := func(path string, v any) { ops = append(ops, PatchOp{"add", at + path, v}) }
	sidecar := in.sidecar(w)
	// First among the init containers, so that the others can use the
	// mesh too.
	if len(spec.InitContainers) == 0 {
		add("/spec/initContainers", []corev1.Container{sidecar})
	} else {
		add("/spec/initContainers/0", sidecar)
	}
	for i, c := range spec.Containers {
		if len(c.Env) == 0 {
			add(fmt.Sprintf("/spec/containers/%d/env", i), env)
			continue
		}
		for _, e := range env {
			add(fmt.Sprintf("/spec/containers/%d/env/-", i), e)
		}
	}
	ops = append(ops, dnsOps...)
	if meta.Annotations == nil {
		add("/metadata/annotations", map[string]string{AnnotationInjected: in.Policy.Sidecar.Image})
	} else {
		add("/metadata/annotations/"+pointerEscape(AnnotationInjected), in.Policy.Sidecar.Image)
	}
	return ops, nil
}

// injected: the pod has the sidecar already (by the webhook, or by the
// offline command before it reached the webhook).
func injected(spec corev1.PodSpec) bool {
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		if c.Name == SidecarName {
			return true
		}
	}
	return false
}

// settings reads the pod's mesh settings; skip is true when it opts out.
func (in *Injector) settings(meta metav1.ObjectMeta, spec corev1.PodSpec, field string) (w workload, skip bool, err error) {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, &FieldError{Field: under(field, "metadata.annotations["+key+"]"), Message: fmt.Sprintf(format, args...)})
	}
	a, l := meta.Annotations, meta.Labels

	switch v := a[AnnotationInject]; v {
	case "false":
		return w, true, nil
	case "", "true":
	default:
		bad(AnnotationInject, "%q is not true or false", v)
	}

	w.Service = cmp.Or(a[AnnotationService], l["app.kubernetes.io/name"], l["app"])
	if w.Service == "" {
		bad(AnnotationService, "missing: name the mesh service here or in the label app.kubernetes.io/name")
	} else if err := identity.ValidateServiceName(w.Service); err != nil {
		bad(AnnotationService, "%v", err)
	}
	w.Version = cmp.Or(a[AnnotationVersion], l["app.kubernetes.io/version"], in.Version)
	if w.Version != "" {
		if err := ValidVersion(w.Version); err != nil {
			bad(AnnotationVersion, "%v", err)
		}
	}

	sc := in.Policy.Sidecar
	if v, ok := a[AnnotationAppPort]; ok {
		p, err := strconv.Atoi(v)
		if err != nil || p < 1 || p > 65535 {
			bad(AnnotationAppPort, "%q is not a port in 1-65535", v)
		}
		w.AppPort = p
	} else {
		var ports []string
		for _, c := range spec.Containers {
			for _, p := range c.Ports {
				ports = append(ports, strconv.Itoa(int(p.ContainerPort)))
				w.AppPort = int(p.ContainerPort)
			}
		}
		if len(ports) != 1 {
			w.AppPort = 0
			bad(AnnotationAppPort, "missing: the pod's containers declare %d ports (%s), so name the app's", len(ports), strings.Join(ports, ", "))
		}
	}

	if v := strings.TrimSpace(a[AnnotationBackends]); v != "" {
		seen := map[string]bool{}
		for _, b := range strings.Split(v, ",") {
			b = strings.TrimSpace(b)
			switch err := identity.ValidateServiceName(b); {
			case err != nil:
				bad(AnnotationBackends, "%v", err)
			case seen[b]:
				bad(AnnotationBackends, "%s is listed twice", b)
			case b == w.Service:
				bad(AnnotationBackends, "a service does not list itself as a backend")
			default:
				seen[b] = true
			}
		}
		for i, b := range slices.Sorted(maps.Keys(seen)) {
			w.Backends = append(w.Backends, Backend{Service: b, Port: sc.UpstreamPortBase + i})
		}
	}
	if n := len(w.Backends); w.AppPort > 0 {
		for _, f := range sidecarPorts(sc) {
			if f.port == w.AppPort {
				bad(AnnotationAppPort, "%d is the sidecar's %s; the app must listen on another port", w.AppPort, f.name)
			}
		}
		if w.AppPort >= sc.UpstreamPortBase && w.AppPort < sc.UpstreamPortBase+n {
			bad(AnnotationAppPort, "%d is one of the sidecar's upstream listeners (%d-%d)", w.AppPort, sc.UpstreamPortBase, sc.UpstreamPortBase+n-1)
		}
	}

	w.HealthPath = a[AnnotationHealthPath]
	if w.HealthPath != "" && !strings.HasPrefix(w.HealthPath, "/") {
		bad(AnnotationHealthPath, "%q must start with /", w.HealthPath)
	}
	return w, false, errors.Join(errs...)
}

// dnsPatch points the pod's resolver at its sidecar (mesh DNS): dnsPolicy
// None with the sidecar as the only nameserver and the cluster's search
// path, and the sysctl that lets the sidecar, not root, listen on port 53
// (a safe sysctl since Kubernetes 1.22). A pod that sets its own DNS, or
// shares the node's network, is refused rather than silently changed.
func (in *Injector) dnsPatch(meta metav1.ObjectMeta, spec corev1.PodSpec, at, field string) ([]PatchOp, error) {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Field: under(field, path), Message: fmt.Sprintf(format, args...)})
	}
	if in.Policy.DNS.Upstream == "" {
		errs = append(errs, &FieldError{Field: "policy spec.dns.upstream", Message: "missing: with mesh DNS the pod's resolver is its sidecar, which forwards other names to the cluster's DNS Service (kubectl -n kube-system get service kube-dns), such as 10.96.0.10:53"})
	}
	if spec.HostNetwork {
		bad("spec.hostNetwork", "a pod on the node's network cannot have its own resolver; mesh DNS is on in the policy")
	}
	if spec.DNSPolicy != "" && spec.DNSPolicy != corev1.DNSClusterFirst {
		bad("spec.dnsPolicy", "%s: mesh DNS sets it (None, with the sidecar as nameserver); remove it", spec.DNSPolicy)
	}
	if spec.DNSConfig != nil {
		bad("spec.dnsConfig", "mesh DNS sets it (the sidecar as nameserver); remove it")
	}
	sysctl := corev1.Sysctl{Name: unprivilegedPortStart, Value: "53"}
	var ops []PatchOp
	add := func(path string, v any) { ops = append(ops, PatchOp{"add", at + path, v}) }
	switch sc := spec.SecurityContext; {
	case sc == nil:
		add("/spec/securityContext", corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{sysctl}})
	case len(sc.Sysctls) == 0:
		add("/spec/securityContext/sysctls", []corev1.Sysctl{sysctl})
	default:
		present := false
		for i, s := range sc.Sysctls {
			if s.Name != sysctl.Name {
				continue
			}
			present = true
			if v, err := strconv.Atoi(s.Value); err != nil || v > 53 {
				bad(fmt.Sprintf("spec.securityContext.sysctls[%d]", i), "%s=%s keeps the sidecar off port 53; mesh DNS needs 53 or less", s.Name, s.Value)
			}
		}
		if !present {
			add("/spec/securityContext/sysctls/-", sysctl)
		}
	}
	searches := []string{}
	domain := in.Policy.Kubernetes.ClusterDomain
	if meta.Namespace != "" {
		searches = append(searches, meta.Namespace+".svc."+domain)
	}
	searches = append(searches, "svc."+domain, domain)
	ndots := "5"
	add("/spec/dnsPolicy", corev1.DNSNone)
	add("/spec/dnsConfig", corev1.PodDNSConfig{
		Nameservers: []string{"127.0.0.1"},
		Searches:    searches,
		Options:     []corev1.PodDNSConfigOption{{Name: "ndots", Value: &ndots}},
	})
	return ops, errors.Join(errs...)
}

// under is the path of a field within the object at field ("" for the
// object itself).
func under(field, path string) string {
	if field == "" {
		return path
	}
	return field + "." + path
}

// appEnv is what each app container gets. A variable the injection sets
// and the pod sets too is refused rather than silently shadowed.
func (in *Injector) appEnv(w workload, spec corev1.PodSpec, field string) ([]corev1.EnvVar, error) {
	add := meshEnv(w)
	var env []corev1.EnvVar
	for _, k := range slices.Sorted(maps.Keys(add)) {
		env = append(env, corev1.EnvVar{Name: k, Value: add[k]})
	}
	var errs []error
	for i, c := range spec.Containers {
		for _, e := range c.Env {
			if _, dup := add[e.Name]; dup {
				errs = append(errs, &FieldError{
					Field:   under(field, fmt.Sprintf("spec.containers[%d].env[%s]", i, e.Name)),
					Message: "is set by the injection; remove it",
				})
			}
		}
	}
	return env, errors.Join(errs...)
}

// sidecar is the injected container.
func (in *Injector) sidecar(w workload) corev1.Container {
	pol := in.Policy
	sc := pol.Sidecar
	always := corev1.ContainerRestartPolicyAlways
	ready := corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: readyCommand(pol)}}
	uid := int64(sc.UID)
	yes, no := true, false
	return corev1.Container{
		Name:          SidecarName,
		Image:         sc.Image,
		Args:          proxyArgs(pol, w),
		RestartPolicy: &always,
		Ports:         []corev1.ContainerPort{{Name: "trellis-mesh", ContainerPort: int32(sc.PublicPort), Protocol: corev1.ProtocolTCP}},
		Env: []corev1.EnvVar{
			{Name: "TRELLIS_ADDR", Value: pol.ControlPlane.Addr},
			{Name: "TRELLIS_TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: expand(pol.Kubernetes.TokenSecret, w.Service, w.Version)},
				Key:                  "token",
			}}},
		},
		Resources: resources(sc.Cpu, sc.Memory),
		// The app starts once the proxy has its certificate and config.
		StartupProbe:   &corev1.Probe{ProbeHandler: ready, PeriodSeconds: 1, TimeoutSeconds: 2, FailureThreshold: 120},
		ReadinessProbe: &corev1.Probe{ProbeHandler: ready, PeriodSeconds: 5, TimeoutSeconds: 2, FailureThreshold: 3},
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &uid,
			RunAsNonRoot:             &yes,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &yes,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}
}

// resources requests cpu in ECS CPU units (1024 a core) and memory in
// MiB, and limits the memory: the sizes of the ECS outputs, in
// Kubernetes's terms.
func resources(cpuUnits, memMiB int) corev1.ResourceRequirements {
	cpu := resource.NewMilliQuantity(int64(cpuUnits)*1000/1024, resource.DecimalSI)
	mem := resource.MustParse(strconv.Itoa(memMiB) + "Mi")
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: *cpu, corev1.ResourceMemory: mem},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: mem},
	}
}

// pointerEscape escapes a key for a JSON pointer (RFC 6901).
func pointerEscape(s string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}
