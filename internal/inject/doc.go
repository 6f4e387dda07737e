// Package inject turns an application team's service manifest and the
// platform team's policy into deployable definitions with the Trellis
// sidecar injected: ECS task definitions and services, CloudFormation,
// Kubernetes, compose. Input problems are collected, all of them, as
// Diagnostics that name the file, line, column and field; nothing is
// produced while any remains.
package inject
