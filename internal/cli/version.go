package cli

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"
)

// versionLine says which trellis this is: its version (set at build time
// with -ldflags "-X ...cli.Version=...", else the module version Go
// stamped), the commit it was built from (and whether the tree had
// changes), and the Go that built it.
func versionLine() string {
	v, commit, modified, goVersion := Version, "", false, ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		if v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	var parts []string
	if commit != "" {
		c := "commit " + commit[:min(12, len(commit))]
		if modified {
			c += ", modified"
		}
		parts = append(parts, c)
	}
	if goVersion != "" {
		parts = append(parts, "built with "+goVersion)
	}
	if len(parts) == 0 {
		return "trellis " + v
	}
	return fmt.Sprintf("trellis %s (%s)", v, strings.Join(parts, "; "))
}

func runVersion(_ context.Context, e *env, args []string) error {
	if err := helpFor(e, "version   (also trellis --version)", args); err != nil {
		return err
	}
	if len(args) > 0 {
		return usageErr("unexpected argument %q", args[0])
	}
	fmt.Fprintln(e.stdout, versionLine())
	return nil
}
