// Package ca is the mesh's certificate authority: it creates or imports a CA
// (ECDSA P-256), signs workload CSRs into X509-SVIDs and issues the control
// plane's serving certificate. It sets every extension of what it signs
// itself and copies nothing from a CSR but the public key, as the SPIFFE
// X509-SVID standard requires. The CA's private key never leaves this package
// except to be written to the file it was loaded from or generated into.
package ca
