package l4

import "github.com/trellis-mesh/trellis/internal/proxy/balance"

// Endpoint is one place a service can be reached.
type Endpoint = balance.Endpoint
