package trellistest

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Exchange writes raw to a new connection and returns what the server
// sent: every response to the requests raw holds, or all it sent until
// it closed the connection, whichever comes first. Nothing waits for the
// server to go quiet; a long deadline only guards against a hang.
func Exchange(t testing.TB, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &got))
	var last error
	for _, method := range requestMethods(raw) {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if last = err; err != nil {
			break // closed: got holds all it sent
		}
		_, last = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if last != nil || resp.Close {
			break
		}
	}
	if ne := net.Error(nil); errors.As(last, &ne) && ne.Timeout() {
		t.Fatalf("no complete answer within 30s; got:\n%s", got.String())
	}
	return got.String()
}

// requestMethods returns the methods of the requests raw holds, in order,
// as far as they parse; one that does not parse counts as a request too
// (the server answers it, and closes).
func requestMethods(raw string) []string {
	var methods []string
	br := bufio.NewReader(strings.NewReader(raw))
	for {
		if _, err := br.Peek(1); err != nil {
			return methods
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			return append(methods, http.MethodGet)
		}
		methods = append(methods, req.Method)
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return methods
		}
	}
}
