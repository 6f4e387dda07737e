package stats

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// Sharing between servers: in an HA setup each server receives the
// summaries of the proxies connected to it, and pushes its own slots
// (those proxies' summaries, summed per interval) to every other server.
// A peer's slot replaces what the receiver held for that (origin, slot):
// a push delivered twice, or a slot sent again after more summaries came
// in, counts once. What a server received from a peer is kept apart from
// its own slots and never exported again.

// Bounds of a push between servers.
const (
	// MaxPushSlots bounds the slots of one push; a server that has more
	// to send (a peer that just joined, or was unreachable) sends the
	// newest first and the rest in the following pushes.
	MaxPushSlots = 12
	// MaxSlotEntries bounds the entries of one slot in a push: a ring's
	// MaxKeys and the Other keys its folding adds.
	MaxSlotEntries = 2 * DefaultMaxKeys
	// MaxPushBytes bounds a push's encoding.
	MaxPushBytes = 32 << 20
	// MaxOrigins bounds the peers whose figures one slot holds.
	MaxOrigins = 32
	// maxPeerCount bounds any one counter of a slot's entry: a sum over
	// the proxies of one server.
	maxPeerCount = 1 << 48
	// foldAfter is how many slots after a slot Merge sums its peers'
	// figures into one: by then the slot's last push is in (it comes
	// within the next slot), the figures count it (Ring.Stats), and
	// keeping each peer's apart would cost a key per peer. A push of the
	// slot from a peer already summed is ignored after that.
	foldAfter = 3
)

// Push is what one server sends another: its own slots, changed since
// its last push to that peer.
type Push struct {
	// Origin is the sending server's ID (a new one each start).
	Origin string `json:"origin"`
	// IntervalMS is the sender's slot width; the receiver's must be the
	// same.
	IntervalMS int64 `json:"intervalMs"`
	// Slots, at most MaxPushSlots, no slot twice.
	Slots []PushSlot `json:"slots"`
}

// PushSlot is one slot of the origin's ring: the summaries its proxies
// sent that the origin filed in that slot, by its clock.
type PushSlot struct {
	// Slot is the slot's number: its start, in Unix time, divided by
	// the interval.
	Slot int64 `json:"slot"`
	// Entries, at most MaxSlotEntries, no key twice.
	Entries []Entry `json:"entries"`
}

// ValidateOrigin checks a server ID: 1 to 64 characters of a-z, 0-9 and
// '-'.
func ValidateOrigin(s string) error {
	if s == "" || len(s) > 64 {
		return errors.New("must be 1 to 64 characters")
	}
	if i := strings.IndexFunc(s, func(c rune) bool { return !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') }); i >= 0 {
		return fmt.Errorf("%q: character at %d is not allowed (use a-z, 0-9, '-')", s, i)
	}
	return nil
}

// DecodePush parses and validates a push's JSON: unknown fields, trailing
// data and any value out of bounds are errors naming the field.
func DecodePush(b []byte) (*Push, error) {
	var p Push
	if err := decodeStrict(b, MaxPushBytes, "push", &p); err != nil {
		return nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Encode returns the push's JSON.
func (p *Push) Encode() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p); err != nil {
		return nil, err
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(b) > MaxPushBytes {
		return nil, fmt.Errorf("push is %d bytes, over the limit of %d", len(b), MaxPushBytes)
	}
	return b, nil
}

// Validate checks a push on its own: origin, bounds, names, no slot or
// key twice.
func (p *Push) Validate() error {
	var errs []error
	if err := ValidateOrigin(p.Origin); err != nil {
		errs = append(errs, fmt.Errorf("origin: %w", err))
	}
	if p.IntervalMS < 1000 || p.IntervalMS > 60*1000 {
		errs = append(errs, fmt.Errorf("intervalMs: %d is not between 1000 and 60000", p.IntervalMS))
	}
	if len(p.Slots) > MaxPushSlots {
		errs = append(errs, fmt.Errorf("slots: %d, over the limit of %d", len(p.Slots), MaxPushSlots))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	seenSlot := map[int64]bool{}
	for i := range p.Slots {
		ps := &p.Slots[i]
		if ps.Slot <= 0 {
			return fmt.Errorf("slots[%d]: slot %d is not positive", i, ps.Slot)
		}
		if seenSlot[ps.Slot] {
			return fmt.Errorf("slots[%d]: slot %d is listed twice", i, ps.Slot)
		}
		seenSlot[ps.Slot] = true
		if len(ps.Entries) > MaxSlotEntries {
			return fmt.Errorf("slots[%d]: %d entries, over the limit of %d", i, len(ps.Entries), MaxSlotEntries)
		}
		seen := make(map[Key]bool, len(ps.Entries))
		for j := range ps.Entries {
			e := &ps.Entries[j]
			if err := e.validatePeer(); err != nil {
				return fmt.Errorf("slots[%d].entries[%d]: %w", i, j, err)
			}
			if seen[e.Key] {
				return fmt.Errorf("slots[%d].entries[%d]: key %s->%s route %q version %q is listed twice", i, j, e.Source, e.Destination, e.Route, e.Version)
			}
			seen[e.Key] = true
		}
	}
	return nil
}

// validatePeer checks an entry of a peer's slot: any service's, but named
// as a proxy of that service would have named it.
func (e *Entry) validatePeer() error {
	var own string
	switch e.Direction {
	case Outbound:
		own = e.Source
	case Inbound:
		own = e.Destination
	default:
		return fmt.Errorf("direction %q: want %s or %s", e.Direction, Outbound, Inbound)
	}
	if err := identity.ValidateServiceName(own); err != nil {
		return fmt.Errorf("%s entry's service: %w", e.Direction, err)
	}
	// The bounds of a proxy's entry but the counters', which sum a
	// server's proxies.
	c := *e
	c.Codes, c.Latency = [5]uint64{}, [NumBuckets]uint64{}
	c.BytesSent, c.BytesReceived, c.Connections, c.Retries, c.Denied = 0, 0, 0, 0, 0
	if err := c.Validate(own); err != nil {
		return err
	}
	for i, v := range e.Codes {
		if v > maxPeerCount {
			return fmt.Errorf("codes[%d]: %d is over the limit of %d", i, v, uint64(maxPeerCount))
		}
	}
	for i, v := range e.Latency {
		if v > maxPeerCount {
			return fmt.Errorf("latency[%d]: %d is over the limit of %d", i, v, uint64(maxPeerCount))
		}
	}
	for _, v := range []uint64{e.BytesSent, e.BytesReceived, e.Connections, e.Retries, e.Denied} {
		if v > maxPeerCount {
			return fmt.Errorf("a counter, %d, is over the limit of %d", v, uint64(maxPeerCount))
		}
	}
	return nil
}

// Cursor is what a server last sent one peer: per ring slot, the slot
// and its generation then. The zero value has sent nothing. Not safe for
// concurrent use: one peer's pusher owns it.
type Cursor struct {
	marks []mark
}

type mark struct {
	idx int64
	gen uint64
}

// Export returns the ring's own slots (never a peer's) that changed since
// c, newest first, at most MaxPushSlots, and the cursor to keep once the
// push that carries them is delivered. Slots older than Keep at now are
// left out.
func (r *Ring) Export(c Cursor, now time.Time) ([]PushSlot, Cursor) {
	cur := now.UnixNano() / int64(r.interval)
	r.mu.Lock()
	defer r.mu.Unlock()
	next := Cursor{marks: make([]mark, len(r.slots))}
	copy(next.marks, c.marks)
	var changed []int
	for i := range r.slots {
		sl := &r.slots[i]
		if sl.idx <= cur-int64(len(r.slots)) || len(sl.counts) == 0 {
			continue
		}
		if next.marks[i] != (mark{sl.idx, sl.gen}) {
			changed = append(changed, i)
		}
	}
	slices.SortFunc(changed, func(a, b int) int { return cmp.Compare(r.slots[b].idx, r.slots[a].idx) })
	if len(changed) > MaxPushSlots {
		changed = changed[:MaxPushSlots]
	}
	out := make([]PushSlot, 0, len(changed))
	for _, i := range changed {
		sl := &r.slots[i]
		ps := PushSlot{Slot: sl.idx, Entries: make([]Entry, 0, min(len(sl.counts), MaxSlotEntries))}
		for k, v := range sl.counts {
			if len(ps.Entries) == MaxSlotEntries {
				break // unreachable with a ring's own bound; kept for the receiver's
			}
			ps.Entries = append(ps.Entries, Entry{Key: k, Counts: *v})
		}
		out = append(out, ps)
		next.marks[i] = mark{sl.idx, sl.gen}
	}
	return out, next
}

// Merge files a validated push from a peer at the time now (the
// receiver's clock): each slot replaces what the ring held for that
// origin and slot. Slots older than the ring, or too far ahead of now (a
// clock far off), are left out; their number is returned.
func (r *Ring) Merge(p *Push, now time.Time) (skipped int) {
	if p.IntervalMS != r.interval.Milliseconds() {
		return len(p.Slots)
	}
	cur := now.UnixNano() / int64(r.interval)
	n := int64(len(r.slots))
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range p.Slots {
		ps := &p.Slots[i]
		if ps.Slot <= cur-n || ps.Slot > cur+n/8 {
			skipped++
			continue
		}
		sl := &r.slots[int(ps.Slot%n)]
		switch {
		case sl.idx > ps.Slot:
			skipped++
			continue
		case sl.idx < ps.Slot:
			sl.reset(ps.Slot)
		}
		if sl.folded[p.Origin] {
			skipped++ // counted already
			continue
		}
		if sl.peers == nil {
			sl.peers = map[string]map[Key]*Counts{}
		}
		if _, ok := sl.peers[p.Origin]; !ok && len(sl.peers) >= MaxOrigins {
			skipped++
			continue
		}
		m := make(map[Key]*Counts, len(ps.Entries))
		for j := range ps.Entries {
			e := &ps.Entries[j]
			if e.zero() {
				continue
			}
			c := e.Counts
			m[r.intern(e.Key)] = &c
		}
		sl.peers[p.Origin] = m
	}
	for i := range r.slots {
		if sl := &r.slots[i]; len(sl.peers) > 0 && sl.idx < cur-foldAfter {
			r.fold(sl)
		}
	}
	r.peerAt = now
	return skipped
}

// fold sums the peers' figures of sl into sl.merged, within the ring's
// key bound (further keys go to their service's Other key, as Add's do).
func (r *Ring) fold(sl *slot) {
	if sl.merged == nil {
		sl.merged = map[Key]*Counts{}
		sl.folded = map[string]bool{}
	}
	for origin, m := range sl.peers {
		for k, c := range m {
			if o := sl.merged[k]; o != nil {
				o.Add(c)
				continue
			}
			if len(sl.merged) >= r.maxKeys {
				r.folded++
				own := k.Source
				if k.Direction == Inbound {
					own = k.Destination
				}
				k = otherKey(k.Direction, own)
				k.Source, k.Destination = r.name(k.Source), r.name(k.Destination)
				if o := sl.merged[k]; o != nil {
					o.Add(c)
					continue
				}
			}
			sl.merged[k] = c // m is dropped: c is the slot's now
		}
		sl.folded[origin] = true
		delete(sl.peers, origin)
	}
}

// reset makes sl the empty slot idx.
func (sl *slot) reset(idx int64) {
	sl.idx = idx
	if sl.counts == nil {
		sl.counts = map[Key]*Counts{}
		sl.byService = map[string]int{}
	} else {
		clear(sl.counts)
		clear(sl.byService)
	}
	clear(sl.peers)
	clear(sl.merged)
	clear(sl.folded)
}
