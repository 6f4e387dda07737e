// Command trellis is the Trellis service mesh: control plane, sidecar proxy,
// CLI and the all-in-one `trellis up`, in one binary.
package main

import (
	"os"

	"github.com/trellis-mesh/trellis/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
