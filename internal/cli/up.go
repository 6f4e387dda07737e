package cli

import "context"

func runUp(ctx context.Context, e *env, args []string) error { return usageErr("not yet") }
