// Package v1 holds the Trellis resource types: plain structs with json and
// yaml tags, a Validate method on each, and a YAML decoder that reports every
// problem with its file, line and field. The control plane stores resources in
// this form, the CLI applies them, and the HTTP API serves them.
package v1
