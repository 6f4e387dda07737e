package check

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	v1 "github.com/trellis-mesh/trellis/api/v1"
)

// StatusDelay is how old, at most, the proxy status the API shows may be:
// a server writes a proxy's versions to the store at most this often
// (control.DefaultStatusInterval), so a proxy that just acknowledged may
// still show behind.
const StatusDelay = 5 * time.Second

// Proxies checks that every proxy is on its current snapshot: one that
// rejected it (a NACK, with its reason) is an error at once; one merely
// behind is a warning, as its status may be StatusDelay old, until the
// caller has seen it behind, without progress, for l.BehindError
// (behind[instance]). It also reports a proxy whose certificate has
// expired, and instances registered with no proxy connected for them.
func Proxies(m Mesh, behind map[string]time.Duration, l Limits) []Finding {
	ps := slices.Clone(m.Proxies)
	slices.SortFunc(ps, func(a, b v1.ProxyStatus) int { return cmp.Compare(a.Instance, b.Instance) })
	var out []Finding
	connected := map[string]bool{}
	for _, p := range ps {
		connected[p.Instance] = true
		at := "proxy " + p.Instance
		applied := "none yet"
		if p.AckedVersion != "" {
			applied = p.AckedVersion
		}
		switch {
		case p.Error != "":
			out = append(out, Finding{Severity: Error, Check: "proxies", Where: at,
				What: fmt.Sprintf("rejected snapshot %s: %s (it serves the last one it applied: %s)", p.SentVersion, p.Error, applied),
				Fix:  "fix what the reason names (the proxy's log says more); the proxy applies the next snapshot the server sends"})
		case p.SentVersion != p.AckedVersion:
			if d := behind[p.Instance]; d >= l.behindError() {
				out = append(out, Finding{Severity: Error, Check: "proxies", Where: at,
					What: fmt.Sprintf("has not applied snapshot %s for %v (applied: %s); it may be stuck or overloaded", p.SentVersion, d.Round(time.Second), applied),
					Fix:  "look at the proxy's log and its host (a paused or starved process); restart it if it does not recover"})
			} else {
				out = append(out, Finding{Severity: Warning, Check: "proxies", Where: at,
					What: fmt.Sprintf("behind (status up to %v old): sent %s, applied %s", StatusDelay, p.SentVersion, applied),
					Fix:  "run trellis check again in a few seconds"})
			}
		}
		if p.SVIDExpiresAt != nil && !p.SVIDExpiresAt.After(m.Now) {
			out = append(out, Finding{Severity: Error, Check: "proxies", Where: at,
				What: fmt.Sprintf("its certificate expired at %s: peers refuse it", p.SVIDExpiresAt.UTC().Format(time.DateTime)),
				Fix:  "look at the proxy's log for why it could not renew (its token, the CA); restart it"})
		}
	}
	ins := slices.Clone(m.Instances)
	slices.SortFunc(ins, func(a, b v1.Instance) int { return cmp.Compare(a.ID, b.ID) })
	for _, i := range ins {
		if !connected[i.ID] {
			out = append(out, Finding{Severity: Warning, Check: "proxies", Where: "instance " + i.ID,
				What: fmt.Sprintf("instance of %s is registered but no proxy is connected for it", i.Service),
				Fix:  "its proxy has gone; the registration expires with its lease (seconds), or another server still holds its stream"})
		}
	}
	if len(out) == 0 {
		out = append(out, ok("proxies", fmt.Sprintf("%d proxies connected, each on its current snapshot", len(ps))))
	}
	return out
}
