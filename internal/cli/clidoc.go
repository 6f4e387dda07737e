//go:build !proxyonly

package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
)

// CLIReferenceFile is where the generated CLI reference is committed,
// relative to the repository root.
const CLIReferenceFile = "docs/reference/cli.md"

// CLIReference renders docs/reference/cli.md from the commands themselves:
// each command (and each subcommand of a group such as token, ca or inject)
// is run with -h, and what it would print, its usage line and its flag
// set, is written down. Nothing is listed by hand, so a new flag or
// subcommand shows up here, and the test beside this file fails until the
// committed reference is regenerated.
//
// A group's subcommands are the words that follow the group's name in its
// usage line ("ca roots | ca add-root FILE" names roots and add-root), and
// each must answer -h with help: a subcommand that does not is an error,
// not a silent gap.
func CLIReference() ([]byte, error) {
	cmds := commands()
	names := slices.Sorted(maps.Keys(cmds))
	var b bytes.Buffer
	b.WriteString("# trellis command reference\n\n")
	b.WriteString("<!-- Generated from internal/cli by `go test ./internal/cli ./api/v1 -run Reference -update`. Do not edit. -->\n\n")
	b.WriteString("Every command and its flags, as `trellis COMMAND -h` prints them. ")
	b.WriteString("Flags take one dash or two (`-f`, `--service`); a default of `~` is the home directory of whoever runs the command. ")
	b.WriteString("The proxy-only build (`-tags proxyonly`) has only the commands that do not need the control plane's code: ")
	b.WriteString("not `server`, `up`, `down`, `inject`, `backup` or `restore`.\n\n")
	b.WriteString("| command | what it does |\n| --- | --- |\n")
	for _, n := range names {
		fmt.Fprintf(&b, "| [`%s`](#trellis-%s) | %s |\n", n, n, cell(cmds[n].summary))
	}
	for _, n := range names {
		page, err := helpOf([]string{n})
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "\n## trellis %s\n\n%s.\n\n", n, upperFirst(cmds[n].summary))
		fmt.Fprintf(&b, "Usage: `trellis %s`\n", page.usage)
		if page.fs != nil {
			b.WriteString("\n")
			b.WriteString(flagTable(page.fs))
			continue
		}
		subs := subcommands(n, page.usage)
		if len(subs) == 0 {
			b.WriteString("\nNo flags.\n")
			continue
		}
		// Subcommands with the same flags (inject's formats) share one
		// section rather than repeating one table seven times.
		type section struct {
			names, usages []string
			table         string
		}
		var sections []*section
		for _, s := range subs {
			sp, err := helpOf([]string{n, s})
			if err != nil {
				return nil, err
			}
			t := ""
			if sp.fs != nil {
				t = flagTable(sp.fs)
			}
			i := slices.IndexFunc(sections, func(x *section) bool { return t != "" && x.table == t })
			if i < 0 {
				sections = append(sections, &section{table: t})
				i = len(sections) - 1
			}
			sections[i].names = append(sections[i].names, s)
			sections[i].usages = append(sections[i].usages, sp.usage)
		}
		for _, s := range sections {
			fmt.Fprintf(&b, "\n### trellis %s %s\n\n", n, strings.Join(s.names, ", "))
			for _, u := range s.usages {
				fmt.Fprintf(&b, "Usage: `trellis %s`\n", u)
				if len(s.usages) > 1 {
					b.WriteString("\n")
				}
			}
			if s.table == "" {
				if len(s.usages) == 1 {
					b.WriteString("\n")
				}
				b.WriteString("No flags.\n")
				continue
			}
			if len(s.usages) == 1 {
				b.WriteString("\n")
			}
			b.WriteString(s.table)
		}
	}
	return b.Bytes(), nil
}

// helpPage is what one `trellis ... -h` printed.
type helpPage struct {
	usage string
	fs    *flag.FlagSet // nil: a group with no flags of its own
}

// helpOf runs trellis PATH... -h and returns what it printed. The
// environment is empty and the context already cancelled, so a command
// that failed to honour -h could reach nothing.
func helpOf(path []string) (helpPage, error) {
	var page *helpPage
	var out bytes.Buffer
	e := &env{stdout: &out, stderr: &out, getenv: func(string) string { return "" }}
	e.helpShown = func(usage string, fs *flag.FlagSet) {
		if page == nil {
			page = &helpPage{usage: usage, fs: fs}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	args := append(slices.Clone(path[1:]), "-h")
	err := commands()[path[0]].run(ctx, e, args)
	if !errors.Is(err, flag.ErrHelp) || page == nil {
		return helpPage{}, fmt.Errorf("trellis %s -h: want its help, got error %v and output %q", strings.Join(path, " "), err, out.String())
	}
	return *page, nil
}

var subcommandWord = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)

// subcommands lists, in order, the lowercase words that follow the group's
// name in its usage line: "ca roots | ca add-root FILE" gives roots and
// add-root, "inject validate|ecs -f M" gives validate and ecs.
func subcommands(group, usage string) []string {
	var subs []string
	words := strings.Fields(usage)
	for i, w := range words {
		if w != group || i+1 == len(words) {
			continue
		}
		for _, s := range strings.Split(words[i+1], "|") {
			if subcommandWord.MatchString(s) && !slices.Contains(subs, s) {
				subs = append(subs, s)
			}
		}
	}
	return subs
}

// flagTable renders a flag set as -h prints it: name and value
// placeholder, default (when not the zero value), help.
func flagTable(fs *flag.FlagSet) string {
	var b strings.Builder
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n == 0 {
		return "No flags.\n"
	}
	b.WriteString("| flag | default | what it does |\n| --- | --- | --- |\n")
	home, _ := os.UserHomeDir()
	fs.VisitAll(func(f *flag.Flag) {
		arg, help := flag.UnquoteUsage(f)
		name := "--" + f.Name
		if len(f.Name) == 1 {
			name = "-" + f.Name
		}
		if arg != "" {
			name += " " + arg
		}
		def := f.DefValue
		if home != "" && (def == home || strings.HasPrefix(def, home+string(os.PathSeparator))) {
			def = "~" + def[len(home):]
		}
		switch def {
		case "", "false", "0", "0s", "[]":
			def = ""
		default:
			def = "`" + def + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", codeCell(name), codeCell(def), cell(help))
	})
	return b.String()
}

// cell makes text safe in a Markdown table cell.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "<", `\<`)
	return strings.ReplaceAll(s, "\n", " ")
}

// codeCell makes text safe in a table cell inside a code span, where a
// backslash is literal except before the cell separator.
func codeCell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
