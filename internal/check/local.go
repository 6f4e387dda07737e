package check

import (
	"fmt"
	"io/fs"
)

// LocalFile is a file of this machine the caller looked at.
type LocalFile struct {
	// Path of the file.
	Path string
	// Role names it for people: "admin token", "CA key", ...
	Role string
	// Mode is its mode, as stat gave it.
	Mode fs.FileMode
	// Secret files (tokens, keys) must be readable by their owner alone;
	// others (the context file) should be.
	Secret bool
}

// Files checks that the files are not open to other users: an error for
// a secret, a warning for the rest.
func Files(files []LocalFile) []Finding {
	var out []Finding
	for _, f := range files {
		perm := f.Mode.Perm()
		if perm&0o077 == 0 {
			continue
		}
		sev, why := Warning, "other users can read where the server is and which files hold its secrets"
		if f.Secret {
			sev, why = Error, "other users can read the secret in it"
		}
		out = append(out, Finding{Severity: sev, Check: "files", Where: f.Path,
			What: fmt.Sprintf("the %s has mode %04o: %s", f.Role, uint32(perm), why),
			Fix:  "chmod 600 " + f.Path + secretFix(f)})
	}
	if len(out) == 0 && len(files) > 0 {
		out = append(out, ok("files", fmt.Sprintf("%d local files of the mesh readable by their owner only", len(files))))
	}
	return out
}

func secretFix(f LocalFile) string {
	if f.Secret && f.Role != "CA key" && f.Role != "store secret" {
		return " (and, if others may have read it, replace the token: trellis token create, then token delete the old one)"
	}
	return ""
}

// ContextFile is what the caller found of the context file `trellis up`
// writes.
type ContextFile struct {
	Path string
	// PID is the trellis up that wrote it; Alive whether it still runs.
	PID   int
	Alive bool
}

// Context reports a context file left by a trellis up that is gone: other
// commands would try its server. nil (no context file) is fine.
func Context(c *ContextFile) []Finding {
	switch {
	case c == nil:
		return nil
	case c.PID <= 0:
		return []Finding{ok("context", "names no trellis up process; whether its server runs is checked above")}
	case !c.Alive:
		return []Finding{{Severity: Warning, Check: "context", Where: c.Path,
			What: fmt.Sprintf("left by a trellis up (pid %d) that is no longer running: commands without TRELLIS_ADDR try its server", c.PID),
			Fix:  "rm " + c.Path + " (or start trellis up again)"}}
	}
	return []Finding{ok("context", fmt.Sprintf("written by the running trellis up (pid %d)", c.PID))}
}
