// Package kubernetes holds no code: its test checks the manifests beside
// it against the Kubernetes API's own types.
package kubernetes
