// Package identity defines the workload identities of a Trellis mesh: SPIFFE
// IDs of the form spiffe://<trust-domain>/svc/<service>, and the rules for
// the names inside them. It is a leaf package (standard library only) so that
// every other package, the data plane included, can share one definition.
package identity
