package identity_test

import (
	"fmt"

	"github.com/trellis-mesh/trellis/internal/identity"
)

func ExampleParse() {
	id, err := identity.Parse("spiffe://trellis.local/svc/greeter")
	if err != nil {
		panic(err)
	}
	fmt.Println(id.TrustDomain(), id.Service())
	_, err = identity.Parse("spiffe://trellis.local/ns/default/sa/greeter")
	fmt.Println(err)
	// Output:
	// trellis.local greeter
	// spiffe id "spiffe://trellis.local/ns/default/sa/greeter": path must be /svc/<service>
}

func ExampleParseSPIFFE() {
	id, err := identity.ParseSPIFFE("spiffe://trellis.local/trellis/server")
	if err != nil {
		panic(err)
	}
	fmt.Println(id.TrustDomain(), id.Path())
	_, err = id.Workload()
	fmt.Println(err)
	_, err = identity.ParseSPIFFE("spiffe://trellis.local/svc/greeter#")
	fmt.Println(err)
	// Output:
	// trellis.local /trellis/server
	// spiffe id "spiffe://trellis.local/trellis/server": path must be /svc/<service>
	// spiffe id "spiffe://trellis.local/svc/greeter#": '#' at byte 34 is not allowed in a path (use a-z, A-Z, 0-9, '.', '-', '_')
}
