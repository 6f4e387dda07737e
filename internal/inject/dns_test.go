package inject

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
)

// Mesh DNS on ECS: awsvpc takes no dnsServers, so a redirect rule it is,
// where the task may have one (EC2 launch type, transparent mode), and a
// note saying why not elsewhere.
func TestECSMeshDNS(t *testing.T) {
	for _, tc := range []struct {
		name             string
		dns, transparent bool
		launchType       string
		redirect         bool
		note             string
	}{
		{"off", false, true, "EC2", false, ""},
		{"fargate", true, true, "FARGATE", false, "Fargate grants no NET_ADMIN"},
		{"explicit", true, false, "EC2", false, "with spec.sidecar.transparentProxy a redirect rule"},
		{"ec2 transparent", true, true, "EC2", true, "the trellis-dns-redirect container installs a redirect rule"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, ds := load(t, pipeline+"hello-web.yaml", pipeline+"policy.yaml", "3f9c2a1b", "")
			if ds != nil {
				t.Fatal(ds)
			}
			plan.Policy.DNS.Enabled = tc.dns
			plan.Policy.Sidecar.TransparentProxy = tc.transparent
			plan.LaunchType = tc.launchType
			out := plan.ECS()
			byName := map[string]ContainerDefinition{}
			for _, c := range out.RegisterTaskDefinition.ContainerDefinitions {
				byName[c.Name] = c
			}
			app, proxy := byName["hello-web"], byName[SidecarName]
			cmd := strings.Join(proxy.Command, " ")
			env := map[string]string{}
			for _, kv := range app.Environment {
				env[kv.Name] = kv.Value
			}
			if tc.dns != strings.Contains(cmd, "--dns-listen 127.0.0.1:15053") || tc.dns != (env["TRELLIS_DNS"] == "127.0.0.1:15053") {
				t.Errorf("dns %v: proxy command %q, app TRELLIS_DNS %q", tc.dns, cmd, env["TRELLIS_DNS"])
			}
			notes := strings.Join(out.Notes, "\n")
			if tc.note == "" && notes != "" || !strings.Contains(notes, tc.note) {
				t.Errorf("notes %q, want %q", notes, tc.note)
			}
			r, ok := byName[DNSRedirectName]
			if ok != tc.redirect {
				t.Fatalf("redirect container %v, want %v", ok, tc.redirect)
			}
			dependsOnRedirect := slices.Contains(app.DependsOn, ContainerDepends{ContainerName: DNSRedirectName, Condition: "SUCCESS"})
			if dependsOnRedirect != tc.redirect {
				t.Errorf("app depends on %+v", app.DependsOn)
			}
			if !ok {
				return
			}
			if got := strings.Join(r.Command, " "); got != "redirect --dns-only --dns-port 15053 --proxy-uid 1337" {
				t.Errorf("redirect command %q", got)
			}
			if r.Essential || r.LinuxParameters == nil || !slices.Contains(r.LinuxParameters.Capabilities.Add, "NET_ADMIN") {
				t.Errorf("redirect container %+v: want non-essential, with NET_ADMIN", r)
			}
		})
	}
}

// podWith is a pod in namespace shop with mod applied, as JSON.
func podWith(t *testing.T, mod func(*corev1.Pod)) corev1.Pod {
	t.Helper()
	pod := corev1.Pod{}
	pod.Namespace = "shop"
	pod.Labels = map[string]string{"app.kubernetes.io/name": "hello-web", "app.kubernetes.io/version": "v1"}
	pod.Spec.Containers = []corev1.Container{{Name: "web", Image: "web:1", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}
	if mod != nil {
		mod(&pod)
	}
	return pod
}

func patchPod(t *testing.T, in *Injector, pod corev1.Pod) (corev1.Pod, error) {
	t.Helper()
	ops, err := in.PodPatch(pod.ObjectMeta, pod.Spec, "", "")
	if err != nil {
		return corev1.Pod{}, err
	}
	doc, _ := json.Marshal(pod)
	patch, _ := json.Marshal(ops)
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("patch does not apply: %v\n%s", err, patch)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	return got, nil
}

// Mesh DNS on Kubernetes: the pod's resolver is its sidecar, with the
// cluster's search path, and the sidecar may listen on port 53.
func TestKubernetesMeshDNS(t *testing.T) {
	in := testInjector(t)
	in.Policy.DNS = DNSPolicy{Enabled: true, Port: DefaultDNSPort, Upstream: "10.96.0.10:53"}

	for _, tc := range []struct {
		name    string
		mod     func(*corev1.Pod)
		sysctls []corev1.Sysctl
	}{
		{"no security context", nil, []corev1.Sysctl{{Name: unprivilegedPortStart, Value: "53"}}},
		{"security context", func(p *corev1.Pod) {
			uid := int64(1000)
			p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: &uid}
		}, []corev1.Sysctl{{Name: unprivilegedPortStart, Value: "53"}}},
		{"other sysctl", func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "net.ipv4.ping_group_range", Value: "0 0"}}}
		}, []corev1.Sysctl{{Name: "net.ipv4.ping_group_range", Value: "0 0"}, {Name: unprivilegedPortStart, Value: "53"}}},
		{"port start already 0", func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: unprivilegedPortStart, Value: "0"}}}
		}, []corev1.Sysctl{{Name: unprivilegedPortStart, Value: "0"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := patchPod(t, in, podWith(t, tc.mod))
			if err != nil {
				t.Fatal(err)
			}
			if got.Spec.DNSPolicy != corev1.DNSNone || got.Spec.DNSConfig == nil {
				t.Fatalf("dnsPolicy %q, dnsConfig %+v", got.Spec.DNSPolicy, got.Spec.DNSConfig)
			}
			dc := got.Spec.DNSConfig
			if strings.Join(dc.Nameservers, ",") != "127.0.0.1" ||
				strings.Join(dc.Searches, " ") != "shop.svc.cluster.local svc.cluster.local cluster.local" ||
				len(dc.Options) != 1 || dc.Options[0].Name != "ndots" || *dc.Options[0].Value != "5" {
				t.Errorf("dnsConfig %+v", dc)
			}
			if !slices.Equal(got.Spec.SecurityContext.Sysctls, tc.sysctls) {
				t.Errorf("sysctls %+v, want %+v", got.Spec.SecurityContext.Sysctls, tc.sysctls)
			}
			if tc.name == "security context" && *got.Spec.SecurityContext.RunAsUser != 1000 {
				t.Errorf("the pod's security context was replaced: %+v", got.Spec.SecurityContext)
			}
			args := strings.Join(got.Spec.InitContainers[0].Args, " ")
			if !strings.Contains(args, "--dns-listen 127.0.0.1:53 --dns-upstream 10.96.0.10:53") {
				t.Errorf("sidecar args %q", args)
			}
		})
	}

	for _, tc := range []struct {
		name string
		mod  func(*corev1.Pod)
		pol  func(*Injector)
		want string
	}{
		{"host network", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, nil, "spec.hostNetwork: a pod on the node's network"},
		{"own dnsPolicy", func(p *corev1.Pod) { p.Spec.DNSPolicy = corev1.DNSDefault }, nil, "spec.dnsPolicy: Default: mesh DNS sets it"},
		{"own dnsConfig", func(p *corev1.Pod) { p.Spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"1.1.1.1"}} }, nil, "spec.dnsConfig: mesh DNS sets it"},
		{"port start too high", func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: unprivilegedPortStart, Value: "1024"}}}
		}, nil, "spec.securityContext.sysctls[0]: net.ipv4.ip_unprivileged_port_start=1024 keeps the sidecar off port 53"},
		{"no upstream", nil, func(in *Injector) { in.Policy.DNS.Upstream = "" }, "policy spec.dns.upstream: missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := testInjector(t)
			in.Policy.DNS = DNSPolicy{Enabled: true, Port: DefaultDNSPort, Upstream: "10.96.0.10:53"}
			if tc.pol != nil {
				tc.pol(in)
			}
			_, err := patchPod(t, in, podWith(t, tc.mod))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}

	// Off by default: the pod's DNS is left alone.
	got, err := patchPod(t, testInjector(t), podWith(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.DNSPolicy != "" || got.Spec.DNSConfig != nil || got.Spec.SecurityContext != nil {
		t.Errorf("mesh DNS off, but dnsPolicy %q dnsConfig %+v securityContext %+v", got.Spec.DNSPolicy, got.Spec.DNSConfig, got.Spec.SecurityContext)
	}
}

// The webhook's policy with mesh DNS and no upstream is refused at start,
// not pod by pod.
func TestLoadPolicyNeedsDNSUpstream(t *testing.T) {
	src := strings.Replace(readFile(t, pipeline+"policy.yaml"), "  forbidLatest: true\n", "  forbidLatest: true\n  dns: {enabled: true}\n", 1)
	_, ds := LoadPolicy("policy.yaml", strings.NewReader(src))
	if ds == nil || !strings.Contains(ds.Error(), "spec.dns: upstream missing") {
		t.Errorf("diagnostics %v, want spec.dns upstream missing", ds)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
