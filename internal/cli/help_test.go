package cli

import (
	"bytes"
	"maps"
	"slices"
	"strings"
	"testing"
)

// groupSubcommands are the words that follow each command that has them; the
// test asks each for help in every way a person would.
var groupSubcommands = map[string][]string{
	"get":       {"services", "instances", "proxies", "tokens", "mesh", "service", "intention", "route", "gateway"},
	"delete":    {"mesh", "service", "intention", "route", "gateway"},
	"intention": {"allow", "deny"},
	"token":     {"create", "list", "delete"},
	"ca":        {"roots", "add-root", "rotate", "remove-root"},
	"inject":    {"validate", "ecs", "cloudformation", "kubernetes", "compose", "systemd", "mesh", "webhook", "webhook-config"},
	"stat":      {"service"},
}

// Help on every command and every subcommand, however asked, prints a
// usage and exits 0 without reaching for a server (issue 23 item 3).
func TestHelpEverywhere(t *testing.T) {
	var calls [][]string
	for _, name := range slices.Sorted(maps.Keys(commands())) {
		for _, h := range []string{"-h", "--help", "-help"} {
			calls = append(calls, []string{name, h})
		}
		for _, sub := range groupSubcommands[name] {
			calls = append(calls,
				[]string{name, sub, "-h"}, []string{name, sub, "--help"},
				[]string{name, sub, "x", "-h"}, []string{name, sub, "x", "y", "--help"})
		}
		if groupSubcommands[name] != nil {
			calls = append(calls, []string{name, "help"})
		}
	}
	for _, args := range calls {
		var stdout, stderr bytes.Buffer
		code := Main(args, &stdout, &stderr)
		if code != 0 || !strings.Contains(stderr.String(), "Usage: trellis "+args[0]) {
			t.Errorf("trellis %s: exit %d, stderr %q; want 0 and the usage of %s", strings.Join(args, " "), code, stderr.String(), args[0])
		}
	}
}
