// Package check diagnoses a mesh: pure functions over what the API shows
// (resources, instances, proxy status, the trust bundle, the rotation) and
// over facts the caller gathered about local files, returning findings that
// say what is wrong, where, and what to do. `trellis check` and `trellis
// apply` use it; it does no I/O, so the API server can serve the same
// findings.
package check
