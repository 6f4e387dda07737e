package stats

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// SummaryType is the type URL of the discovery requests that carry a
// summary on the proxy's ADS stream. The summary's JSON travels in the
// request node's metadata, field "summary"; the node's id and cluster are
// the proxy's instance and service. The server answers only a refused
// summary, with a response of this type whose one resource (of type
// RefusalType) holds the reason.
const SummaryType = "type.trellis.dev/trellis.v1.Summary"

// RefusalType is the type of the resource in the server's answer to a
// refused summary: the JSON {"error": "..."}.
const RefusalType = "type.trellis.dev/trellis.v1.SummaryRefusal"

// Directions of an entry. An outbound entry is traffic the proxy sent
// (its service is the source); an inbound one is traffic it received (its
// service is the destination, the source is the peer's service, or empty
// for a caller outside the mesh).
const (
	Outbound = "outbound"
	Inbound  = "inbound"
)

// Other is the name an entry takes in place of the peer (and route and
// version) when it holds the traffic of keys folded for the size bound.
const Other = "*"

// Bounds of a summary.
const (
	// MaxEntries bounds the entries of one summary: the busiest keys
	// are kept, the others are folded into one Other entry per direction.
	MaxEntries = 200
	// MaxSummaryBytes bounds a summary's encoding (about 400 bytes an
	// entry at most).
	MaxSummaryBytes = 256 << 10
	// maxCount bounds any one counter of an entry, so that sums over a
	// window cannot overflow.
	maxCount = 1 << 40
	// maxLabel bounds a route or version label.
	maxLabel = 128
)

// LatencyBounds are the upper bounds, in seconds, of the latency buckets
// (the same as trellis_request_duration_seconds). An entry's Latency has
// one count per bound and a last one for slower requests.
var LatencyBounds = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// NumBuckets is len(LatencyBounds)+1.
const NumBuckets = 16

// Summary is what one proxy counted over one interval.
type Summary struct {
	// Instance and Service name the reporting proxy; they must be those
	// its stream registered.
	Instance string `json:"instance"`
	Service  string `json:"service"`
	// IntervalMS is how long the counts cover, in milliseconds.
	IntervalMS int64 `json:"intervalMs"`
	// Entries, at most MaxEntries, no key twice.
	Entries []Entry `json:"entries"`
	// Folded counts the keys folded into Other entries.
	Folded int `json:"folded,omitempty"`
}

// Key names what an entry counts.
type Key struct {
	Direction   string `json:"direction"`
	Source      string `json:"source"`
	Destination string `json:"destination"`
	// Route is the route rule's name (outbound); empty for inbound.
	Route string `json:"route,omitempty"`
	// Version is the destination's version: the one the request was
	// sent to (outbound) or the proxy's own (inbound).
	Version string `json:"version,omitempty"`
}

// Counts are the figures of one key over an interval.
type Counts struct {
	// Codes counts requests by status class: 1xx to 5xx.
	Codes [5]uint64 `json:"codes"`
	// Latency counts requests by latency bucket (see LatencyBounds).
	Latency [NumBuckets]uint64 `json:"latency"`
	// BytesSent and BytesReceived are TCP bytes to and from the peer.
	BytesSent     uint64 `json:"bytesSent,omitempty"`
	BytesReceived uint64 `json:"bytesReceived,omitempty"`
	// Connections are TCP connections opened.
	Connections uint64 `json:"connections,omitempty"`
	// Retries are retried attempts (outbound).
	Retries uint64 `json:"retries,omitempty"`
	// Denied are requests and connections refused by authorization.
	Denied uint64 `json:"denied,omitempty"`
}

// Entry is one key's counts.
type Entry struct {
	Key
	Counts
}

// Requests is the number of requests counted.
func (c *Counts) Requests() uint64 {
	var n uint64
	for _, v := range c.Codes {
		n += v
	}
	return n
}

// Add adds o to c.
func (c *Counts) Add(o *Counts) {
	for i := range c.Codes {
		c.Codes[i] += o.Codes[i]
	}
	for i := range c.Latency {
		c.Latency[i] += o.Latency[i]
	}
	c.BytesSent += o.BytesSent
	c.BytesReceived += o.BytesReceived
	c.Connections += o.Connections
	c.Retries += o.Retries
	c.Denied += o.Denied
}

// zero reports whether c counts nothing.
func (c *Counts) zero() bool { return *c == Counts{} }

// traffic orders entries for the size bound: requests, then bytes, then
// connections.
func (c *Counts) traffic() uint64 {
	return c.Requests()*1_000_000 + (c.BytesSent+c.BytesReceived)/1024 + c.Connections
}

// Bound folds the entries of s beyond MaxEntries (the least busy) into
// one Other entry per direction, counting the keys folded in s.Folded.
// The result has at most MaxEntries entries, whatever it had before.
func (s *Summary) Bound() { s.bound(MaxEntries) }

func (s *Summary) bound(max int) {
	if len(s.Entries) <= max {
		return
	}
	slices.SortStableFunc(s.Entries, func(a, b Entry) int {
		ta, tb := a.traffic(), b.traffic()
		switch {
		case ta > tb:
			return -1
		case ta < tb:
			return 1
		}
		return 0
	})
	// Two Other entries at most (one per direction), so keep max-2.
	keep := s.Entries[:max-2]
	other := map[string]*Entry{}
	var order []string
	for _, e := range s.Entries[max-2:] {
		o := other[e.Direction]
		if o == nil {
			o = &Entry{Key: otherKey(e.Direction, s.Service)}
			other[e.Direction] = o
			order = append(order, e.Direction)
		}
		o.Add(&e.Counts)
		s.Folded++
	}
	out := slices.Clone(keep)
	for _, d := range order {
		out = append(out, *other[d])
	}
	s.Entries = out
}

// otherKey is the key of the Other entry of direction d for service own.
func otherKey(d, own string) Key {
	if d == Outbound {
		return Key{Direction: d, Source: own, Destination: Other}
	}
	return Key{Direction: d, Source: Other, Destination: own}
}

// Encode returns the summary's JSON.
func (s *Summary) Encode() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // labels stay the size they are
	if err := enc.Encode(s); err != nil {
		return nil, err
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(b) > MaxSummaryBytes {
		return nil, fmt.Errorf("summary is %d bytes, over the limit of %d", len(b), MaxSummaryBytes)
	}
	return b, nil
}

// Decode parses and validates a summary's JSON: unknown fields, trailing
// data and any value out of bounds are errors naming the field.
func Decode(b []byte) (*Summary, error) {
	var s Summary
	if err := decodeStrict(b, MaxSummaryBytes, "summary", &s); err != nil {
		return nil, err
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// decodeStrict decodes one JSON value of at most max bytes into v,
// refusing unknown fields and anything after the value; what names it in
// errors.
func decodeStrict(b []byte, max int, what string, v any) error {
	if len(b) > max {
		return fmt.Errorf("%s is %d bytes, over the limit of %d", what, len(b), max)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("decode %s: %w", what, err)
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("decode %s: data after the %s", what, what)
	}
	return nil
}

// Interval is the time the summary covers.
func (s *Summary) Interval() time.Duration { return time.Duration(s.IntervalMS) * time.Millisecond }

// Validate checks a summary on its own: names, bounds, no key twice.
// Whether its reporter may report it is ValidateFrom's question.
func (s *Summary) Validate() error {
	var errs []error
	if err := identity.ValidateServiceName(s.Service); err != nil {
		errs = append(errs, fmt.Errorf("service: %w", err))
	}
	if s.Instance == "" || len(s.Instance) > 128 {
		errs = append(errs, errors.New("instance: must be 1 to 128 characters"))
	} else if i := strings.IndexFunc(s.Instance, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_')
	}); i >= 0 {
		errs = append(errs, fmt.Errorf("instance %q: character at %d is not allowed", s.Instance, i))
	}
	if s.IntervalMS < 100 || s.IntervalMS > 10*60*1000 {
		errs = append(errs, fmt.Errorf("intervalMs: %d is not between 100 and 600000", s.IntervalMS))
	}
	if len(s.Entries) > MaxEntries {
		errs = append(errs, fmt.Errorf("entries: %d, over the limit of %d", len(s.Entries), MaxEntries))
	}
	if s.Folded < 0 {
		errs = append(errs, fmt.Errorf("folded: %d is negative", s.Folded))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	seen := make(map[Key]bool, len(s.Entries))
	for i := range s.Entries {
		e := &s.Entries[i]
		if err := e.Validate(s.Service); err != nil {
			errs = append(errs, fmt.Errorf("entries[%d]: %w", i, err))
			if len(errs) == 5 {
				errs = append(errs, errors.New("(more errors not shown)"))
				break
			}
			continue
		}
		if seen[e.Key] {
			errs = append(errs, fmt.Errorf("entries[%d]: key %s->%s route %q version %q is listed twice", i, e.Source, e.Destination, e.Route, e.Version))
			break
		}
		seen[e.Key] = true
	}
	return errors.Join(errs...)
}

// Validate checks an entry of a summary from service own: an outbound
// entry's source and an inbound entry's destination must be own.
func (e *Entry) Validate(own string) error {
	switch e.Direction {
	case Outbound:
		if e.Source != own {
			return fmt.Errorf("outbound traffic from %q: a proxy of %q reports only its own service's", e.Source, own)
		}
		if err := peerName(e.Destination, false); err != nil {
			return fmt.Errorf("destination: %w", err)
		}
	case Inbound:
		if e.Destination != own {
			return fmt.Errorf("inbound traffic to %q: a proxy of %q reports only its own service's", e.Destination, own)
		}
		if err := peerName(e.Source, true); err != nil {
			return fmt.Errorf("source: %w", err)
		}
		if e.Route != "" {
			return errors.New("route: inbound entries have none")
		}
	default:
		return fmt.Errorf("direction %q: want %s or %s", e.Direction, Outbound, Inbound)
	}
	if err := label(e.Route); err != nil {
		return fmt.Errorf("route: %w", err)
	}
	if err := label(e.Version); err != nil {
		return fmt.Errorf("version: %w", err)
	}
	for i, v := range e.Codes {
		if v > maxCount {
			return fmt.Errorf("codes[%d]: %d is over the limit of %d", i, v, uint64(maxCount))
		}
	}
	for i, v := range e.Latency {
		if v > maxCount {
			return fmt.Errorf("latency[%d]: %d is over the limit of %d", i, v, uint64(maxCount))
		}
	}
	for _, f := range []struct {
		name string
		v    uint64
	}{{"bytesSent", e.BytesSent}, {"bytesReceived", e.BytesReceived}, {"connections", e.Connections}, {"retries", e.Retries}, {"denied", e.Denied}} {
		if f.v > maxCount {
			return fmt.Errorf("%s: %d is over the limit of %d", f.name, f.v, uint64(maxCount))
		}
	}
	return nil
}

// peerName accepts a service name, Other, and (for a source) empty: a
// caller outside the mesh.
func peerName(s string, emptyOK bool) error {
	if s == Other || s == "" && emptyOK {
		return nil
	}
	return identity.ValidateServiceName(s)
}

// label accepts a route or version label: printable, no spaces, at most
// maxLabel bytes.
func label(s string) error {
	if len(s) > maxLabel {
		return fmt.Errorf("%d bytes, over the limit of %d", len(s), maxLabel)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%q is not UTF-8", s)
	}
	if i := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }); i >= 0 {
		return fmt.Errorf("%q: character at %d is not allowed", s, i)
	}
	return nil
}

// ValidateFrom checks that s is a valid summary that the proxy registered
// as instance of service, at version, may send: its own instance and
// service, only its own service's traffic (Validate checks the entries
// against s.Service), and inbound traffic only at its own version (the
// figures of a version, which a canary is judged by, come from that
// version's proxies alone).
func ValidateFrom(s *Summary, service, instance, version string) error {
	if s.Service != service {
		return fmt.Errorf("summary for service %q on the stream of %q: a proxy reports only its own service's traffic", s.Service, service)
	}
	if s.Instance != instance {
		return fmt.Errorf("summary for instance %q on the stream of %q: a proxy reports only its own traffic", s.Instance, instance)
	}
	for i := range s.Entries {
		if e := &s.Entries[i]; e.Direction == Inbound && e.Version != version {
			return fmt.Errorf("entries[%d]: inbound traffic of version %q on the stream of a proxy registered at version %q: a proxy reports only its own version's", i, e.Version, version)
		}
	}
	return nil
}
