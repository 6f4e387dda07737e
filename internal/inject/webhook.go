package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The mutating admission webhook: the API server sends each pod created
// in an opted-in namespace as an AdmissionReview (admission/v1) and gets
// back the JSON patch that injects the sidecar, or a denial that names
// the annotation at fault.

// WebhookPath is where the webhook answers.
const WebhookPath = "/inject"

// maxReview bounds a request body: the API server's own limit on an
// object is 3 MiB.
const maxReview = 4 << 20

// Webhook is the admission handler.
type Webhook struct {
	Injector *Injector
	Logger   *slog.Logger
}

func (wh *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		http.Error(w, "Content-Type must be application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReview))
	if err != nil {
		http.Error(w, "body: "+err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		http.Error(w, "not an AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	if review.Request == nil {
		http.Error(w, "AdmissionReview without a request", http.StatusBadRequest)
		return
	}
	resp := wh.review(review.Request)
	resp.UID = review.Request.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(out)
}

// review decides one request. Anything but the creation of a pod is let
// through untouched (the webhook configuration asks for nothing else).
func (wh *Webhook) review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Kind.Kind != "Pod" || req.Kind.Group != "" || req.Operation != admissionv1.Create {
		return allow
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny(fmt.Sprintf("the pod does not decode: %v", err))
	}
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "*"
	}
	log := wh.logger().With("namespace", req.Namespace, "pod", name)
	if pod.Namespace == "" {
		// A pod being created often has none yet: the request's is its
		// own (the search path of mesh DNS names it).
		pod.Namespace = req.Namespace
	}
	ops, err := wh.Injector.PodPatch(pod.ObjectMeta, pod.Spec, "", "")
	if err != nil {
		// One line per wrong field, joined: kubectl prints it as one line.
		msg := strings.ReplaceAll(err.Error(), "\n", "; ")
		log.Warn("pod refused", "err", msg)
		return deny(msg)
	}
	if ops == nil {
		log.Debug("pod left alone: opted out or injected already")
		return allow
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return deny(err.Error())
	}
	jp := admissionv1.PatchTypeJSONPatch
	allow.Patch, allow.PatchType = patch, &jp
	log.Info("sidecar injected", "ops", len(ops))
	return allow
}

func deny(msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusForbidden, Reason: metav1.StatusReasonInvalid,
		Message: "trellis sidecar injection: " + msg,
	}}
}

func (wh *Webhook) logger() *slog.Logger {
	if wh.Logger != nil {
		return wh.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// WebhookConfig says where the API server finds the webhook.
type WebhookConfig struct {
	// Name of the MutatingWebhookConfiguration.
	Name string
	// Service and Namespace of the webhook's Kubernetes Service (port
	// 443), or URL when it runs outside the cluster.
	Service, Namespace string
	URL                string
	// CABundle is the PEM the webhook's serving certificate chains to.
	CABundle []byte
	// FailOpen lets pods be created unmeshed when the webhook cannot be
	// reached (failurePolicy Ignore). The default, Fail, never starts a
	// pod in a meshed namespace without its sidecar.
	FailOpen bool
}

// Configuration is the MutatingWebhookConfiguration: pods created in
// namespaces labelled trellis.dev/inject=enabled, admission/v1 only, no
// side effects, and reinvoked if a later webhook changes the pod.
func (c WebhookConfig) Configuration() (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	if len(c.CABundle) == 0 {
		return nil, errors.New("no CA bundle: the API server could not verify the webhook")
	}
	cc := admissionregistrationv1.WebhookClientConfig{CABundle: c.CABundle}
	switch {
	case c.URL != "" && c.Service != "":
		return nil, errors.New("give the webhook's URL or its Service, not both")
	case c.URL != "":
		cc.URL = &c.URL
	case c.Service == "" || c.Namespace == "":
		return nil, errors.New("the webhook's Service and Namespace are needed (or its URL)")
	default:
		path, port := WebhookPath, int32(443)
		cc.Service = &admissionregistrationv1.ServiceReference{Name: c.Service, Namespace: c.Namespace, Path: &path, Port: &port}
	}
	policy := admissionregistrationv1.Fail
	if c.FailOpen {
		policy = admissionregistrationv1.Ignore
	}
	sideEffects := admissionregistrationv1.SideEffectClassNone
	reinvoke := admissionregistrationv1.IfNeededReinvocationPolicy
	match := admissionregistrationv1.Equivalent
	scope := admissionregistrationv1.NamespacedScope
	timeout := int32(10)
	name := c.Name
	if name == "" {
		name = "trellis-sidecar-injector"
	}
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingWebhookConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         "inject.trellis.dev",
			ClientConfig: cc,
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{
					APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}, Scope: &scope,
				},
			}},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{NamespaceLabel: "enabled"}},
			FailurePolicy:           &policy,
			MatchPolicy:             &match,
			SideEffects:             &sideEffects,
			TimeoutSeconds:          &timeout,
			AdmissionReviewVersions: []string{"v1"},
			ReinvocationPolicy:      &reinvoke,
		}},
	}, nil
}
