package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// errUsage marks an error in how the command was called: exit code 2.
var errUsage = errors.New("usage")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// errInvalid marks input that failed validation: exit code 1, with the
// diagnostics already printed.
var errInvalid = errors.New("invalid input")

// errUnreadable marks input that could not be read at all: exit code 2,
// with the diagnostics already printed.
var errUnreadable = errors.New("unreadable input")

// env is what every command gets.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	// server is the control plane connect chose, and serverFrom where
	// its address came from, for errors that say so.
	server, serverFrom string
	// helpShown, when set, is told what -h printed: the usage line and
	// the flag set (nil for a command group without flags of its own).
	// The CLI reference (clidoc.go) is made from it.
	helpShown func(usage string, fs *flag.FlagSet)
}

type command struct {
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

func commands() map[string]command {
	return map[string]command{
		"server":    {"run a control plane server", runServer},
		"proxy":     {"run a sidecar proxy beside an app", runProxy},
		"gateway":   {"run a gateway (ingress, TLS pass-through) from a Gateway resource", runGateway},
		"up":        {"run a whole mesh on this machine from DIR/trellis.yaml", runUp},
		"down":      {"stop the trellis up running on this machine (from another terminal)", runDown},
		"apply":     {"create or update resources from YAML files (-f)", runApply},
		"get":       {"show resources, services, instances, proxies or tokens", runGet},
		"delete":    {"delete a resource: delete KIND NAME", runDelete},
		"intention": {"allow or deny calls: intention allow|deny SRC DST", runIntention},
		"token":     {"create, list or delete tokens", runToken},
		"ca":        {"the CA: ca roots | add-root FILE | rotate | remove-root FINGERPRINT|FILE", runCA},
		"import":    {"bring resources over from another mesh: import appmesh -f FILE... [-o DIR]", runImport},
		"inject":    {"inject the sidecar: inject validate|ecs|cloudformation|kubernetes|compose|mesh, inject webhook", runInject},
		"redirect":  {"install the iptables rules of transparent mode (as ECS does for proxyConfiguration)", runRedirect},
		"top":       {"live view of services and edges by requests/s (plain output once when not a terminal)", runTop},
		"stat":      {"traffic of one service: stat service NAME (its versions and routes)", runStat},
		"backup":    {"save a snapshot of the server's store to FILE: backup FILE", runBackup},
		"restore":   {"make a server's embedded store from a backup, offline: restore FILE --data-dir DIR", runRestore},
		"check":     {"diagnose the mesh: server, CA, proxies, routes, intentions, gateways, local files (exit 1 on an error)", runCheck},
		"ready":     {"exit 0 if the local proxy is ready (a health check that needs no shell)", runReady},
		"version":   {"print the version, commit and Go version (also --version)", runVersion},
	}
}

// oneLine joins a multi-error into one line.
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

// Main runs the CLI and returns the process exit code: 0 ok, 1 failed,
// 2 bad usage.
func Main(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr, getenv: os.Getenv}
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-version" {
		args = []string{"version"}
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "trellis: unknown command %q%s (run trellis help)\n", args[0], didYouMean(args[0], slices.Collect(maps.Keys(cmds))))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := cmd.run(ctx, e, args[1:])
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errInvalid):
		return 1 // the diagnostics are printed
	case errors.Is(err, errUnreadable):
		return 2 // the diagnostics are printed
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "trellis %s: %s\n", args[0], strings.TrimPrefix(err.Error(), "usage: "))
		return 2
	default:
		fmt.Fprintf(stderr, "trellis %s: %s\n", args[0], e.unreachable(err))
		return 1
	}
}

func printUsage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "Usage: trellis COMMAND [flags]\n\nCommands:")
	for _, n := range slices.Sorted(maps.Keys(cmds)) {
		fmt.Fprintf(w, "  %-10s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nRun trellis COMMAND -h for a command's flags.")
}

// flagSet is a flag.FlagSet that reports errors in one line and prints
// help only when asked.
type flagSet struct {
	*flag.FlagSet
	help func()
}

// newFlags returns a flag set that reports errors instead of exiting.
func newFlags(e *env, name, usage string) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // called on every error; help is printed in parse
	return &flagSet{FlagSet: fs, help: func() {
		if e.helpShown != nil {
			e.helpShown(usage, fs)
		}
		fmt.Fprintf(e.stderr, "Usage: trellis %s\n\nFlags:\n", usage)
		fs.SetOutput(e.stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}}
}

// isHelpFlag reports whether a is a request for help.
func isHelpFlag(a string) bool { return a == "-h" || a == "-help" || a == "--help" }

// asksHelp reports whether args ask for help anywhere before a "--": a
// person adds -h at the end of what they typed, after the positional
// arguments where the flag package stops looking.
func asksHelp(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if isHelpFlag(a) {
			return true
		}
	}
	return false
}

// helpFor prints usage and returns flag.ErrHelp (exit 0) when args ask for
// help: "help" as the first argument, or -h anywhere. A group of
// subcommands passes only its first argument, so that `ca rotate -h`
// reaches rotate's own usage.
func helpFor(e *env, usage string, args []string) error {
	if (len(args) > 0 && args[0] == "help") || asksHelp(args) {
		if e.helpShown != nil {
			e.helpShown(usage, nil)
		}
		fmt.Fprintf(e.stderr, "Usage: trellis %s\n", usage)
		return flag.ErrHelp
	}
	return nil
}

// parseSub is parse for a command whose first positional argument picks
// what it acts on (get KIND, intention allow): "help" there asks for help.
func parseSub(fs *flagSet, args []string) error {
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.Arg(0) == "help" {
		fs.help()
		return flag.ErrHelp
	}
	return nil
}

// parse parses flags, turning flag errors into usage errors. -h anywhere
// before "--" prints the help, even after positional arguments.
func parse(fs *flagSet, args []string) error {
	if asksHelp(args) {
		fs.help()
		return flag.ErrHelp
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.help()
			return err
		}
		return usageErr("%v (see trellis %s -h)", err, fs.Name())
	}
	return nil
}

// splitList splits a comma-separated flag, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// logFlags adds --log-level and --log-format and returns a constructor.
func logFlags(fs *flagSet, e *env, defaultLevel string) func() (*slog.Logger, error) {
	level := fs.String("log-level", defaultLevel, "log level: debug, info, warn, error")
	format := fs.String("log-format", "text", "log format: text or json")
	return func() (*slog.Logger, error) {
		var l slog.Level
		if err := l.UnmarshalText([]byte(*level)); err != nil {
			return nil, usageErr("--log-level %q: want debug, info, warn or error", *level)
		}
		opts := &slog.HandlerOptions{Level: l}
		switch *format {
		case "text":
			return slog.New(slog.NewTextHandler(e.stderr, opts)), nil
		case "json":
			return slog.New(slog.NewJSONHandler(e.stderr, opts)), nil
		}
		return nil, usageErr("--log-format %q: want text or json", *format)
	}
}
