package l7

import (
	"net/http"
	"net/netip"
	"strings"
)

// What an edge (the ingress gateway, a sidecar's edge listener) does to a
// request from outside the mesh before it goes on. An outside client is
// nobody the mesh knows: whatever it writes about the mesh's own workings
// or about the hops before it is a claim, believed only from a configured
// trusted hop (a load balancer in front of the edge).
//
//   - Fields the mesh uses internally are stripped, from everyone:
//     X-Forwarded-Client-Cert (PeerHeader) and any field named
//     Trellis-*, X-Trellis-* or X-Mesh-*.
//   - From a peer not in the trusted hops (the default: none), every
//     forwarding claim is stripped (Forwarded, X-Forwarded-*, X-Real-Ip,
//     and the other client-address and original-URL fields that apps and
//     frameworks read, see forwardingClaims) and so is X-Request-Id; the
//     edge then sets X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host,
//     Forwarded and X-Real-Ip from what it saw, and the next proxy makes a
//     new request ID.
//   - From a trusted peer, its claims are kept: the peer's address is
//     appended to X-Forwarded-For and Forwarded gets this hop's element;
//     X-Forwarded-Proto and -Host are kept when present (else set);
//     X-Real-Ip is the nearest address of the X-Forwarded-For chain that
//     is not a trusted hop; X-Request-Id is kept.

// fromEdgeKey marks, in a request's context, a request the ingress
// checked against a client's limits and then added its forwarding fields
// to: the outbound after it checks it within the mesh's limits.
type fromEdgeKey struct{}

// internalPrefixes name the fields, lowercase, that are the mesh's own.
var internalPrefixes = [...]string{"trellis-", "x-trellis-", "x-mesh-"}

// forwardingClaims are the fields, lowercase, in which a client claims
// something about the hops before the edge: its address, the scheme or
// host it used, the URL it asked for. Any "x-forwarded-" field is one too.
var forwardingClaims = map[string]bool{
	"forwarded": true, "x-real-ip": true, "x-client-ip": true, "true-client-ip": true,
	"x-cluster-client-ip": true, "cf-connecting-ip": true, "fastly-client-ip": true,
	"x-original-forwarded-for": true, "x-originating-ip": true, "x-remote-ip": true,
	"x-remote-addr": true, "x-proxyuser-ip": true, "client-ip": true,
	"x-original-host": true, "x-host": true, "x-original-url": true, "x-rewrite-url": true,
	"x-url-scheme": true, "front-end-https": true,
}

// isInternalField reports whether the field name is one the mesh uses
// internally, in any case.
func isInternalField(name string) bool {
	if len(name) < 7 {
		return false
	}
	if strings.EqualFold(name, "x-forwarded-client-cert") {
		return true
	}
	for _, p := range internalPrefixes {
		if hasPrefixFold(name, p) {
			return true
		}
	}
	return false
}

// hasPrefixFold is strings.HasPrefix ignoring ASCII case, without the copy
// strings.ToLower makes of a canonical (capitalized) field name.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// foldedIn reports whether name in lowercase is in set, without a copy for
// names of up to 64 bytes (a map index by string(bytes) does not allocate).
func foldedIn(set map[string]bool, name string) bool {
	var buf [64]byte
	if len(name) > len(buf) {
		return set[strings.ToLower(name)]
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return set[string(buf[:len(name)])]
}

// stripInternal deletes the fields the mesh uses internally: no one
// outside a proxy writes them.
func stripInternal(h http.Header) {
	for k := range h {
		if isInternalField(k) {
			delete(h, k)
		}
	}
}

func isForwardingClaim(name string) bool {
	return foldedIn(forwardingClaims, name) || hasPrefixFold(name, "x-forwarded-")
}

// meshTrailer reports whether a field is one the proxies set, replace or
// strip in a request's head (the mesh's own, a forwarding claim, the
// request ID and trace context): sent as a trailer it would pass beside
// the head's checks, and an app that merges trailers into the header (as
// some frameworks do) would read the caller's value.
func meshTrailer(k string) bool {
	return isInternalField(k) || isForwardingClaim(k) || foldedIn(meshFields, k)
}

// forwardFromEdge rewrites the fields of r, a request from outside the
// mesh, as the package comment above says. scheme is how the client
// reached the edge (http or https); trusted are the hops whose claims are
// kept.
func forwardFromEdge(r *http.Request, scheme string, trusted []netip.Prefix) {
	h := r.Header
	stripInternal(h)
	peer := remoteIP(r.RemoteAddr)
	fromTrusted := peer.IsValid() && inPrefixes(trusted, peer)
	var chain, proto, host, fwd string
	if fromTrusted {
		chain = strings.Join(h.Values("X-Forwarded-For"), ", ")
		proto, host = h.Get("X-Forwarded-Proto"), h.Get("X-Forwarded-Host")
		fwd = strings.Join(h.Values("Forwarded"), ", ")
	} else {
		for k := range h {
			if isForwardingClaim(k) {
				delete(h, k)
			}
		}
		h.Del(RequestIDHeader)
	}
	if proto == "" {
		proto = scheme
	}
	// The authority is written twice more; one longer than any host name
	// and port is left out, so that what the edge adds stays well within
	// the room the mesh keeps for itself (MeshHeaderBytes).
	authority := r.Host
	if len(authority) > maxForwardedHost {
		authority = ""
	}
	if host == "" {
		host = authority
	}
	elem := "proto=" + scheme
	if authority != "" {
		elem = "host=" + forwardedValue(authority) + ";" + elem
	}
	if peer.IsValid() {
		chain = joinList(chain, peer.String())
		elem = "for=" + forwardedFor(peer) + ";" + elem
	}
	if chain != "" {
		h["X-Forwarded-For"] = []string{chain}
	}
	h["Forwarded"] = []string{joinList(fwd, elem)}
	h["X-Forwarded-Proto"] = []string{proto}
	if host != "" {
		h["X-Forwarded-Host"] = []string{host}
	}
	delete(h, "X-Real-Ip")
	if client := realClient(chain, trusted); client != "" {
		h["X-Real-Ip"] = []string{client}
	}
}

// maxForwardedHost is the longest authority copied into the forwarding
// fields: a DNS name (253) and a port.
const maxForwardedHost = 253 + 6

// realClient is the nearest address of an X-Forwarded-For chain that is
// not a trusted hop: the client as far as the trusted hops vouch. An entry
// that is not an address ends the walk at the hop after it, the last one
// that can be vouched for.
func realClient(chain string, trusted []netip.Prefix) string {
	last := ""
	for chain != "" {
		var e string
		if i := strings.LastIndexByte(chain, ','); i >= 0 {
			e, chain = chain[i+1:], chain[:i]
		} else {
			e, chain = chain, ""
		}
		a, err := netip.ParseAddr(strings.TrimSpace(e))
		if err != nil {
			return last
		}
		a = a.Unmap().WithZone("") // another host's interface name is not ours to repeat
		last = a.String()
		if !inPrefixes(trusted, a) {
			return last
		}
	}
	return last
}

func joinList(list, elem string) string {
	if list == "" {
		return elem
	}
	return list + ", " + elem
}

// remoteIP is the address of a request's RemoteAddr (ip:port), or the
// zero Addr. The zone is dropped: it names an interface of this host, means
// nothing to the next hop, and is free text a header must not carry.
func remoteIP(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap().WithZone("")
}

func inPrefixes(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// forwardedFor is a node of Forwarded's for= (RFC 7239 section 6): an
// IPv6 address is bracketed, and then quoted.
func forwardedFor(a netip.Addr) string {
	if a.Is6() {
		return `"[` + a.String() + `]"`
	}
	return a.String()
}

// forwardedValue is v as a token, or quoted when it is not one (a host
// with a port has a ':').
func forwardedValue(v string) string {
	if validToken(v) {
		return v
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('"')
	return b.String()
}
