package appmesh

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Levels of a Finding.
const (
	// LevelDropped is configuration that does not carry over: behaviour
	// differs after the import (exit status 1).
	LevelDropped = "dropped"
	// LevelNote says how something carried over differently, or names
	// data that configures nothing in Trellis.
	LevelNote = "note"
)

// Finding is one entry of the report.
type Finding struct {
	File  string `json:"file"`
	Line  int    `json:"line"`
	Path  string `json:"path"`
	Level string `json:"level"`
	// Message says what happened to the field.
	Message string `json:"message"`
	// Nearest is the closest Trellis setting, or "not supported".
	Nearest string `json:"nearest,omitempty"`
}

// Report is what Convert found.
type Report struct {
	Findings []Finding `json:"findings"`
}

// Carried reports whether everything carried over (no LevelDropped).
func (r *Report) Carried() bool {
	for _, f := range r.Findings {
		if f.Level == LevelDropped {
			return false
		}
	}
	return true
}

func (r *Report) add(n *Node, level, msg, nearest string) {
	r.Findings = append(r.Findings, Finding{File: n.File, Line: n.Line, Path: n.Path, Level: level, Message: msg, Nearest: nearest})
}

// drop reports n as not carried over and marks it consumed.
func (r *Report) drop(n *Node, msg, nearest string) {
	if n == nil {
		return
	}
	n.Use()
	r.add(n, LevelDropped, msg, nearest)
}

// note reports how n carried over and marks it consumed.
func (r *Report) note(n *Node, msg string) {
	if n == nil {
		return
	}
	n.Use()
	r.add(n, LevelNote, msg, "")
}

func (r *Report) sort() {
	slices.SortStableFunc(r.Findings, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Path, b.Path))
	})
}

// WriteText writes one line per finding: FILE:LINE: PATH: LEVEL: MESSAGE
// (nearest: SETTING).
func (r *Report) WriteText(w io.Writer) {
	for _, f := range r.Findings {
		fmt.Fprintf(w, "%s:%d: %s: %s: %s", f.File, f.Line, f.Path, f.Level, f.Message)
		if f.Nearest != "" {
			fmt.Fprintf(w, " (nearest: %s)", f.Nearest)
		}
		fmt.Fprintln(w)
	}
}

// leftover is what the report says of a field the mapping did not
// consume, by its key: the nearest Trellis setting.
var leftover = map[string]struct{ level, msg, nearest string }{
	"tags":              {LevelNote, "AWS tags are not carried", "spec.description of the Service, for people"},
	"meshOwner":         {LevelNote, "shared meshes (another account's) are not carried", "one mesh per control plane; tokens scope who may do what"},
	"logging":           {LevelDropped, "Envoy access logs are not carried", "the proxies' JSON access logs (log/slog, --log-format json), traces by --otlp-endpoint"},
	"accessLog":         {LevelDropped, "Envoy access logs are not carried", "the proxies' JSON access logs (log/slog, --log-format json)"},
	"outlierDetection":  {LevelDropped, "outlier detection settings are not carried", "built-in outlier ejection of the caller's sidecar (not configurable)"},
	"queryParameters":   {LevelDropped, "matches on query parameters are not carried", "not supported"},
	"ipPreference":      {LevelDropped, "IP version preference is not carried", "not supported: sidecars use the addresses instances register"},
	"responseType":      {LevelDropped, "DNS response type is not carried", "not supported: sidecars pick an endpoint per connection"},
	"idle":              {LevelDropped, "idle timeouts are not carried", "not supported"},
	"scheme":            {LevelDropped, "matches on the scheme are not carried", "not supported"},
	"port":              {LevelDropped, "matches and targets by port are not carried: a Trellis service has one port", "spec.port of the Service"},
	"backendGroups":     {LevelDropped, "backend groups are not carried", "one Intention per backend"},
	"namespaceSelector": {LevelNote, "namespace selection is not carried: workloads join by token", "trellis inject kubernetes (the webhook)"},
}

// leftovers reports everything under n that the mapping did not
// consume.
func (r *Report) leftovers(n *Node) {
	if n == nil {
		return
	}
	for _, c := range n.Vals {
		r.leftover(c)
	}
}

func (r *Report) leftover(n *Node) {
	n.unused(func(u *Node) {
		key := u.Path[strings.LastIndexAny(u.Path, ".")+1:]
		if i := strings.IndexByte(key, '['); i >= 0 {
			key = key[:i]
		}
		key = camel(key)
		if l, ok := leftover[key]; ok {
			r.add(u, l.level, l.msg, l.nearest)
			return
		}
		r.add(u, LevelDropped, "not carried over", "not supported")
	})
}
