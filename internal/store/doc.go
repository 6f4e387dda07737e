// Package store is the control plane's persistence: a small key-value
// interface with atomic multi-key commits, prefix watches and leases, and its
// implementation on the etcd v3 API (an embedded single-member etcd by
// default, or an existing cluster). storetest holds the conformance suite
// every implementation passes.
package store
