package l7

import (
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/trellis-mesh/trellis/internal/proxy/h1"
)

// The proxies' own request and response plumbing, in place of
// httputil.ReverseProxy: each request here is ours to change (the server
// made it for us), so nothing is cloned, and a response is copied to the
// client with one pooled buffer.

// hopHeaders describe one connection, not the message: a proxy drops them
// and the fields its Connection header names (RFC 9110 section 7.6.1).
var hopHeaders = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for _, name := range strings.Split(f, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// upgradeType is the protocol a request or response asks to switch to, or
// "".
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// prepareRequest readies a request received by a proxy to be sent on: it
// drops the hop-by-hop fields, keeping "TE: trailers" and an upgrade, and
// query parameters that do not parse (which an app might read otherwise
// than we did). It returns the upgrade asked for, or "".
func prepareRequest(r *http.Request) (string, error) {
	up := upgradeType(r.Header)
	if up != "" && !isPrint(up) {
		return "", errors.New("invalid protocol to switch to")
	}
	trailers := httpguts.HeaderValuesContainsToken(r.Header["Te"], "trailers")
	removeHopByHop(r.Header)
	if trailers {
		r.Header["Te"] = []string{"trailers"}
	}
	if up != "" {
		r.Header["Connection"] = []string{"Upgrade"}
		r.Header["Upgrade"] = []string{up}
	}
	if q := r.URL.RawQuery; q != "" {
		if _, err := url.ParseQuery(q); err != nil {
			v, _ := url.ParseQuery(q)
			r.URL.RawQuery = v.Encode()
		}
	}
	r.Close = false
	return up, nil
}

func isPrint(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// flusherOf finds the http.Flusher under w's wrappers, or nil.
func flusherOf(w http.ResponseWriter) http.Flusher {
	for {
		switch x := w.(type) {
		case http.Flusher:
			return x
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return nil
		}
	}
}

// abortResponse ends w's response as failed (an HTTP/1.1 connection
// closed before the last chunk, a stream reset): see h1.Abort.
func abortResponse(w http.ResponseWriter) { h1.Abort(w) }

var errAborted = errors.New("l7: response aborted")

var _ h1.Aborter = (*streamWriter)(nil)

// serveUpgrade joins the client's connection to an upstream's after a
// 101 response whose body is that upstream connection.
func serveUpgrade(w http.ResponseWriter, reqType string, resp *http.Response) error {
	back, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return errors.New("101 response without a connection")
	}
	defer back.Close()
	if respType := upgradeType(resp.Header); !strings.EqualFold(respType, reqType) {
		return errors.New("upstream switched to " + respType + ", not the " + reqType + " asked for")
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return err
	}
	defer conn.Close()
	removeHopByHop(resp.Header)
	resp.Header["Connection"] = []string{"Upgrade"}
	resp.Header["Upgrade"] = []string{reqType}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	resp.Header.Write(brw)
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		return nil // the client is gone
	}
	// As httputil.ReverseProxy: when one direction ends, both do.
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(back, brw.Reader) // what the client sent after its head, then the rest
		done <- struct{}{}
	}()
	go func() {
		io.Copy(conn, back)
		done <- struct{}{}
	}()
	<-done
	return nil
}
