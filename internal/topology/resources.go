package topology

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// A snapshot travels as resources: its base (everything but the
// upstreams) and one resource per upstream. Each resource's hash is the
// SHA-256 of its JSON; the snapshot's version is the hash of the base's
// hash and each upstream's name and hash, so a proxy that patched some
// resources of its snapshot can check that it holds exactly what the
// server computed (Split(patched).Version == the announced version).

// Resource is one part of a split snapshot, encoded.
type Resource struct {
	// Name is the upstream's service; empty for the base.
	Name string
	// Hash identifies JSON: equal bytes, equal hash.
	Hash string
	// JSON is the resource's encoding, shared: callers must not modify it.
	JSON []byte
}

// Resources is a snapshot split for the wire.
type Resources struct {
	Version   string
	Base      Resource
	Upstreams []Resource // in the snapshot's order (sorted by service)
}

// baseWire encodes a snapshot without its version and upstreams: the
// outer fields, less nested, hide the embedded ones, and nil pointers
// are left out.
type baseWire struct {
	*Snapshot
	Version   *string   `json:"version,omitempty"`
	Upstreams *struct{} `json:"upstreams,omitempty"`
}

// Split encodes s as resources and returns them with the version of s's
// content. It does not modify s.
func Split(s *Snapshot) (*Resources, error) {
	base, err := json.Marshal(baseWire{Snapshot: s})
	if err != nil {
		return nil, fmt.Errorf("encode snapshot base: %w", err)
	}
	r := &Resources{Base: Resource{Hash: hash(base), JSON: base}, Upstreams: make([]Resource, len(s.Upstreams))}
	for i := range s.Upstreams {
		b, err := json.Marshal(&s.Upstreams[i])
		if err != nil {
			return nil, fmt.Errorf("encode upstream %s: %w", s.Upstreams[i].Service, err)
		}
		r.Upstreams[i] = Resource{Name: s.Upstreams[i].Service, Hash: hash(b), JSON: b}
	}
	r.Version = r.version()
	return r, nil
}

// version hashes the resources' names and hashes. Names are service
// names (no spaces or newlines), so the input is unambiguous.
func (r *Resources) version() string {
	h := sha256.New()
	fmt.Fprintf(h, "base %s\n", r.Base.Hash)
	for _, u := range r.Upstreams {
		fmt.Fprintf(h, "upstream %s %s\n", u.Name, u.Hash)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Full returns the JSON of the whole snapshot, as json.Marshal of the
// Snapshot with Version set would decode: built from the resources'
// bytes, without encoding anything again.
func (r *Resources) Full() []byte {
	n := len(r.Base.JSON) + 64
	for _, u := range r.Upstreams {
		n += len(u.JSON) + 1
	}
	var b bytes.Buffer
	b.Grow(n)
	b.WriteString(`{"version":`)
	v, _ := json.Marshal(r.Version)
	b.Write(v)
	b.WriteString(`,"upstreams":[`)
	for i, u := range r.Upstreams {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(u.JSON)
	}
	b.WriteByte(']')
	// The base is an object with at least the service in it.
	if rest := r.Base.JSON[1:]; len(rest) > 1 {
		b.WriteByte(',')
		b.Write(rest)
	} else {
		b.WriteByte('}')
	}
	return b.Bytes()
}

// DecodeBase decodes a base resource into a new snapshot without
// upstreams or version.
func DecodeBase(b []byte) (*Snapshot, error) {
	var s Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode snapshot base: %w", err)
	}
	s.Version, s.Upstreams = "", nil
	return &s, nil
}

func hash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}
