// Package appmesh reads AWS App Mesh definitions and turns them into
// Trellis resources, with a report of everything that does not carry
// over. It reads three forms, detected per document: CloudFormation/SAM
// templates (YAML or JSON, with their intrinsic functions resolved where
// the template defines the value), the JSON of `aws appmesh describe-*`
// (single objects, arrays of them, and lists whose items hold a spec), and
// appmesh.k8s.aws/v1beta2 Kubernetes resources. Read normalizes each into
// an Object whose Spec is a position-keeping tree with camelCase keys;
// Convert maps the Objects to resources, inject manifests and a Report;
// every spec field Convert does not consume is reported, so nothing is
// dropped silently. The package does no I/O beyond the bytes it is given.
package appmesh
