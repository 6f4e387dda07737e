// Package identity defines the identities of a Trellis mesh: SPIFFE IDs,
// parsed byte for byte by the SPIFFE ID standard (ParseSPIFFE, SPIFFEID),
// and the narrower workload IDs spiffe://<trust-domain>/svc/<service>
// (Parse, ID) with the rules for the names inside them. A certificate's ID
// is read from the signed bytes of its subjectAltName, never through
// net/url, whose normalization would let a forged spelling pass. It is a
// leaf package (standard library only) so that every other package, the
// data plane included, can share one definition.
package identity
