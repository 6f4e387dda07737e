package control

import (
	"fmt"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/topology"
)

// checkHostnameClaims reports every mesh DNS name that two services would
// answer at once the resources in batch replace the stored ones: a
// Service's hostname equal to another's hostname or to another's
// <service>.<domain>. Each name must lead to one service, or an app
// asking for it could be sent to either.
func checkHostnameClaims(stored *topology.Mesh, batch []v1.Resource) []string {
	m := batchMesh(stored, batch)
	mesh := stored.Mesh
	for i := range batch {
		if batch[i].Kind == v1.KindMesh {
			mesh = batch[i].Mesh
		}
	}
	owner := map[string]string{}
	var errs []string
	for _, svc := range sortedKeys(m.Services) {
		for _, n := range v1.MeshNames(mesh, svc, m.Services[svc]) {
			if other, ok := owner[n]; ok && other != svc {
				errs = append(errs, fmt.Sprintf("DNS name %q of %s is also %s's: a name may belong to one service only", n, svc, other))
				continue
			}
			owner[n] = svc
		}
	}
	return errs
}
