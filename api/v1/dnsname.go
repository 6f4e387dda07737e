package v1

import (
	"fmt"
	"strings"
)

// Bounds of the mesh's DNS names: every proxy holds them all, and the
// server's authority answers from them.
const (
	maxMeshDomains     = 16
	maxServiceHostname = 32
)

// ValidateMeshDNSName checks a mesh domain (spec.dns.domains of the Mesh)
// or a Service's hostname: a plain DNS name that the mesh may answer for
// its apps. Case does not matter (names are compared in lowercase); the
// name is written without a trailing dot, so that "a.b" and "a.b." cannot
// be two names; it is no address, no wildcard and no loopback name (an app
// asking for "localhost" must get its own host, never a mesh service).
func ValidateMeshDNSName(name string) error {
	_, _, err := checkDNSName(name, false, ", not a DNS name")
	return err
}

// validMeshDNSNames checks a list of mesh DNS names at path: each valid,
// none twice (ignoring case), at most max.
func validMeshDNSNames(at string, names []string, max int) []error {
	var errs []error
	if len(names) > max {
		errs = append(errs, fieldErr(at, "%d names, at most %d", len(names), max))
	}
	seen := map[string]bool{}
	for i, n := range names {
		if err := ValidateMeshDNSName(n); err != nil {
			errs = append(errs, fieldErr(fmt.Sprintf("%s[%d]", at, i), "%v", err))
			continue
		}
		if l := strings.ToLower(n); seen[l] {
			errs = append(errs, fieldErr(fmt.Sprintf("%s[%d]", at, i), "%q is listed twice", n))
		} else {
			seen[l] = true
		}
	}
	return errs
}

// MeshNames returns the names service answers at under mesh's DNS, in
// lowercase: <service>.<domain> for each domain, then its hostnames. A
// name too long for DNS is left out.
func MeshNames(mesh *MeshSpec, service string, spec *ServiceSpec) []string {
	var out []string
	if mesh != nil && mesh.DNS != nil {
		for _, d := range mesh.DNS.Domains {
			if n := service + "." + strings.ToLower(d); len(n) <= 253 {
				out = append(out, n)
			}
		}
	}
	if spec != nil {
		for _, h := range spec.Hostnames {
			out = append(out, strings.ToLower(h))
		}
	}
	return out
}
