package l7

import (
	"io"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/proxy/h1"
	"github.com/trellis-mesh/trellis/internal/proxy/tunnel"
)

// response is an answer on its way back to a client. Its head is a list
// of HTTP/2 header fields, as a stream brings it and as the writers send
// it: a response relayed from a stream to a client never becomes an
// http.Header (a map, its keys canonicalized, its values in slices of
// their own, and back again on the other side), which cost about a tenth
// of a sidecar's time per request.
type response struct {
	status int
	// fields are the regular fields, names in lowercase, without the
	// hop-by-hop ones (RFC 9110 section 7.6.1) and without Trailer.
	fields []hpack.HeaderField
	// length is the Content-Length, or -1.
	length int64
	body   io.ReadCloser
	// declared are the trailers announced in the head (canonical names,
	// the mesh's own left out).
	declared []string
	// Where the trailers come from, once body has been read to its end:
	// the stream's body, or net/http's response (neither: none).
	streamBody *streamBody
	httpResp   *http.Response
	// upgraded, for a 101, is the upstream's response whose body is the
	// switched connection (serveUpgrade).
	upgraded *http.Response
}

// get returns the first value of the field name (lowercase), or "".
func (r *response) get(name string) string {
	for _, f := range r.fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// del removes the fields named name (lowercase).
func (r *response) del(name string) {
	r.fields = deleteFields(r.fields, func(n string) bool { return n == name })
}

// deleteFields removes, in place, the fields whose names drop says.
func deleteFields(fields []hpack.HeaderField, drop func(string) bool) []hpack.HeaderField {
	out := fields[:0]
	for _, f := range fields {
		if !drop(f.Name) {
			out = append(out, f)
		}
	}
	clear(fields[len(out):]) // no strings kept alive past the end
	return out
}

// hopFields are hopHeaders in lowercase.
var hopFields = func() map[string]bool {
	m := make(map[string]bool, len(hopHeaders))
	for _, k := range hopHeaders {
		m[strings.ToLower(k)] = true
	}
	return m
}()

// streamResponse makes the response of a request stream from its head
// (status and fields, which are the stream's to give: the tunnel copied
// them for it) and its body.
func streamResponse(s *tunnel.Stream, status int, fields []hpack.HeaderField) *response {
	resp := &responseWithBody{response: response{status: status, length: -1}}
	r := &resp.response
	// Connection-specific fields never come on a stream (the tunnel
	// refuses them); what else is hop-by-hop goes, and the Trailer field
	// is read for the names it announces.
	hop, badLength := false, false
	for _, f := range fields {
		switch {
		case f.Name == "content-length":
			n, ok := parseLength(f.Value)
			if !ok || r.length >= 0 && n != r.length {
				badLength = true
			}
			r.length = n
		case f.Name == "trailer":
			r.declared = appendDeclared(r.declared, f.Value)
			hop = true
		case hopFields[f.Name]:
			hop = true
		}
	}
	if badLength {
		// "+5", "5x", two lengths that disagree: none is relayed, and
		// the body is framed as one of unknown length.
		r.length = -1
		fields = deleteFields(fields, func(n string) bool { return n == "content-length" })
	}
	if hop {
		fields = deleteFields(fields, func(n string) bool { return hopFields[n] })
	}
	r.fields = fields
	resp.body = streamBody{s: s}
	r.body = &resp.body
	r.streamBody = &resp.body
	return r
}

// parseLength parses a Content-Length value: digits only (no sign, no
// blanks), as RFC 9110 section 8.6 has it, and at most 18 of them.
func parseLength(v string) (int64, bool) {
	if v == "" || len(v) > 18 {
		return -1, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return -1, false
		}
		n = n*10 + int64(v[i]-'0')
	}
	return n, true
}

// responseWithBody is a stream's response with its body, in one
// allocation.
type responseWithBody struct {
	response
	body streamBody
}

// appendDeclared appends the trailer names a Trailer field's value
// announces, canonical, but the mesh's own (which come in a head only).
func appendDeclared(names []string, v string) []string {
	for k := range strings.SplitSeq(v, ",") {
		if k = http.CanonicalHeaderKey(strings.TrimSpace(k)); k != "" && !meshTrailer(k) {
			names = append(names, k)
		}
	}
	return names
}

// httpResponse makes a response of one that net/http's types carry (an
// app's, an upgrade's): its header becomes fields, less the hop-by-hop
// ones; resp is the response's own from here on.
func httpResponse(resp *http.Response) *response {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return &response{status: resp.StatusCode, upgraded: resp, body: resp.Body, length: -1}
	}
	removeHopByHop(resp.Header)
	r := &response{status: resp.StatusCode, length: resp.ContentLength, body: resp.Body,
		fields: appendFields(make([]hpack.HeaderField, 0, len(resp.Header)), resp.Header, invalidName)}
	if r.length >= 0 && resp.Header.Get("Content-Length") == "" && !bodiless(resp.StatusCode) {
		// net/http took it out of the header; the writers frame by it.
		// A 204 or 304 has no body, and net/http's 0 is no length of
		// its: a Content-Length would be forbidden (204) or claim an
		// empty representation (304, RFC 9110 section 8.6).
		r.fields = append(r.fields, hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(r.length, 10)})
	}
	if len(resp.Trailer) > 0 {
		for k := range resp.Trailer {
			if !meshTrailer(k) {
				r.declared = append(r.declared, k)
			}
		}
	}
	// net/http fills Trailer at the body's end; an HTTP/1.1 body of known
	// length has none, an HTTP/2 one may have some it did not announce.
	if resp.ContentLength < 0 || len(resp.Trailer) > 0 || resp.ProtoMajor >= 2 {
		r.httpResp = resp
	}
	return r
}

// bodiless reports whether a response of status code has no body
// whatever its head says (RFC 9110 sections 15.2, 15.3.5, 15.4.5).
func bodiless(code int) bool {
	return code < 200 || code == http.StatusNoContent || code == http.StatusNotModified
}

// invalidName reports whether a header key is no token. net/http reads
// an HTTP/1.1 field whose name has a space in it, or before its colon
// ("X A : v"), as a field of that name; the writers take fields as they
// are (h1.HeadFieldsWriter), and a stream's peer refuses the whole head.
func invalidName(k string) bool { return !httpguts.ValidHeaderFieldName(k) }

// appResponse makes a response of an app's read the short way (whose head
// has no Connection, Transfer-Encoding or Trailer field).
func appResponse(fr *h1.Response) *response {
	return &response{status: fr.StatusCode, length: fr.ContentLength, body: fr.Body,
		fields: deleteFields(fr.Fields, func(n string) bool { return hopFields[n] })}
}

// endTrailersOnly marks a gRPC Trailers-Only response (grpc-status in its
// header block, which the gRPC spec allows only there) as bodiless.
// writeResponse flushes the head of a response of unknown length at
// once; a flushed head goes out without END_STREAM, and the client would
// then see a stream that ended with no trailers. A response of length 0
// is never flushed early: its head leaves with END_STREAM when the
// handler returns.
func (r *response) endTrailersOnly() {
	if r.length == -1 && r.get("grpc-status") != "" && strings.HasPrefix(r.get("content-type"), "application/grpc") {
		r.body.Close()
		r.length, r.body = 0, http.NoBody
	}
}

// writeResponse sends resp to w: its head, its body, flushed at every read
// when its length is unknown (streams), and its trailers. An error while
// copying the body aborts the response, so that the client does not take
// a cut body for a whole one.
func writeResponse(w http.ResponseWriter, resp *response) {
	resp.endTrailersOnly()
	// Only a proxy's own refusal (refuse) says an intention denied the
	// call: an app cannot, and the caller's app needs no copy.
	resp.del(deniedField)
	if fw := fieldsWriterOf(w); fw != nil {
		fw.SetHeadFields(resp.fields)
	} else {
		h := w.Header()
		for _, f := range resp.fields {
			k := canonicalNames.get(f.Name)
			h[k] = append(h[k], f.Value)
		}
	}
	if len(resp.declared) > 0 {
		w.Header()["Trailer"] = []string{strings.Join(resp.declared, ", ")}
	}
	w.WriteHeader(resp.status)
	if !copyBody(w, resp.body, resp.length == -1) {
		return
	}
	var trailers []hpack.HeaderField
	switch {
	case resp.streamBody != nil:
		trailers = resp.streamBody.trailerFields()
	case resp.httpResp != nil:
		trailers = appendFields(nil, resp.httpResp.Trailer, invalidName)
	}
	if len(trailers) == 0 {
		return // and no Header map made for nothing
	}
	// Each under http.TrailerPrefix: whether it was announced or not, the
	// writers send it as a trailer, and only once.
	h := w.Header()
	for _, f := range trailers {
		if k := canonicalNames.get(f.Name); !meshTrailer(k) {
			h[http.TrailerPrefix+k] = append(h[http.TrailerPrefix+k], f.Value)
		}
	}
}

// deniedField is DeniedHeader as a field name.
var deniedField = strings.ToLower(DeniedHeader)

// copyBody copies body to w, flushing w at every read if stream, and
// closes body. On an error it aborts w's response and reports false.
func copyBody(w http.ResponseWriter, body io.ReadCloser, stream bool) bool {
	var flusher http.Flusher
	if stream {
		flusher = flusherOf(w)
		if flusher != nil {
			flusher.Flush() // a stream's head leaves before its first message
		}
	}
	buf, pool := smallBuffers.Get().(*[]byte), &smallBuffers
	defer func() { pool.Put(buf) }()
	for {
		n, err := body.Read(*buf)
		if n > 0 {
			if _, werr := w.Write((*buf)[:n]); werr != nil {
				body.Close()
				abortResponse(w)
				return false
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if n == len(*buf) && pool == &smallBuffers {
			pool.Put(buf)
			buf, pool = largeBuffers.Get().(*[]byte), &largeBuffers
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			body.Close()
			abortResponse(w)
			return false
		}
	}
	body.Close()
	return true
}

// fieldsWriterOf finds the h1.HeadFieldsWriter under w's wrappers (the
// HTTP/1.1 server's writer, a stream's), or nil.
func fieldsWriterOf(w http.ResponseWriter) h1.HeadFieldsWriter {
	for {
		switch x := w.(type) {
		case h1.HeadFieldsWriter:
			return x
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return nil
		}
	}
}

var _ h1.HeadFieldsWriter = (*streamWriter)(nil)
