//go:build linux

package integration

import (
	"strings"
	"testing"
)

// logfmtKeys returns the keys of a slog text line (key=value pairs, a
// value bare or double-quoted with backslash escapes), in order.
func logfmtKeys(line string) []string {
	var keys []string
	for i := 0; i < len(line); {
		for i < len(line) && line[i] == ' ' {
			i++
		}
		start := i
		for i < len(line) && line[i] != '=' && line[i] != ' ' {
			i++
		}
		if i >= len(line) || line[i] != '=' {
			return keys // not a key=value pair: the rest is not logfmt
		}
		keys = append(keys, line[start:i])
		i++ // '='
		if i < len(line) && line[i] == '"' {
			for i++; i < len(line) && line[i] != '"'; i++ {
				if line[i] == '\\' {
					i++
				}
			}
			i++
		} else {
			for i < len(line) && line[i] != ' ' {
				i++
			}
		}
	}
	return keys
}

// duplicateKeys returns the first key that a slog text line carries
// twice, "" if none: with --log-format json a parser keeps only one of
// them (issue 23 item 4).
func duplicateKeys(line string) string {
	if !strings.HasPrefix(line, "time=") {
		return ""
	}
	seen := map[string]bool{}
	for _, k := range logfmtKeys(line) {
		if seen[k] {
			return k
		}
		seen[k] = true
	}
	return ""
}

// checkLogKeys fails t for the first line of log that carries a key
// twice.
func checkLogKeys(t *testing.T, name, log string) {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if k := duplicateKeys(line); k != "" {
			t.Errorf("%s logged key %q twice: %s", name, k, line)
			return
		}
	}
}

func TestLogfmtKeys(t *testing.T) {
	for _, tc := range []struct{ line, dup string }{
		{`time=1 level=INFO msg="a b=c" service=x instance=y`, ""},
		{`time=1 level=INFO msg=x service=client instance=c service=greeter`, "service"},
		{`time=1 level=WARN msg="q \" service=z" err="x=y" service=a`, ""},
		{`time=1 level=INFO msg=access token.id=1 token.description="x y" token.id=2`, "token.id"},
		{`Admin token (shown once): x=1 x=2`, ""},
	} {
		if got := duplicateKeys(tc.line); got != tc.dup {
			t.Errorf("duplicateKeys(%q) = %q, want %q", tc.line, got, tc.dup)
		}
	}
}
