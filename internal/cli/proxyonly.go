//go:build proxyonly

package cli

import (
	"context"
	"errors"
)

// The proxy-only build (go build -tags proxyonly,grpcnotrace) is the
// sidecar and gateway image: it leaves out the control plane, the embedded
// etcd and the injection tooling, which would otherwise be linked,
// initialised and paged in by every proxy (idle RSS 30 MB instead of 17).
var errProxyOnly = errors.New("this trellis is the proxy-only build (-tags proxyonly): it has no control plane; use the full build")

func runServer(context.Context, *env, []string) error { return errProxyOnly }

func runUp(context.Context, *env, []string) error { return errProxyOnly }

func runDown(context.Context, *env, []string) error { return errProxyOnly }

func runInject(context.Context, *env, []string) error { return errProxyOnly }

func runBackup(context.Context, *env, []string) error { return errProxyOnly }

func runRestore(context.Context, *env, []string) error { return errProxyOnly }

func runImport(context.Context, *env, []string) error { return errProxyOnly }
