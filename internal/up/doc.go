// Package up runs a whole mesh on one machine for development and demos
// (`trellis up DIR`): a control plane on an embedded etcd, every service of
// DIR/trellis.yaml as a child process with its own sidecar, and a local
// client sidecar with upstream listeners to curl through. Ctrl-C stops all of
// it and leaves nothing running.
package up
