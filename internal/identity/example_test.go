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
