// Package store is the control plane's persistence: a small key-value
// interface with atomic multi-key commits, prefix watches and leases, and its
// implementation on the etcd v3 API (an embedded single-member etcd by
// default, which only the process that started it can reach, over mutual
// TLS with credentials made at every start; or an existing cluster, with TLS
// and etcd's user login). Whoever can write the store controls the mesh, so
// nothing here ever listens without authentication. storetest holds the
// conformance suite every implementation passes, and the intruder probes the
// tests use to show that.
package store
