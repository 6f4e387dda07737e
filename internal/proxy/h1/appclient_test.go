package h1

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/trellis-mesh/trellis/internal/proxy/netconn"
)

// writeBodiless must put on the wire what req.Write would for the same
// request, as a server reads it.
func TestWriteBodilessAsRequestWrite(t *testing.T) {
	for _, tc := range []struct {
		name, method, uri, host string
		header                  http.Header
	}{
		{"get", "GET", "/a/b?x=1&y=%20", "web", http.Header{"Accept": {"*/*"}, "X-Two": {"1", "2"}}},
		{"no user agent", "GET", "/", "web:8080", http.Header{"User-Agent": {""}}},
		{"own user agent", "HEAD", "/", "web", http.Header{"User-Agent": {"curl/8"}}},
		{"post without body", "POST", "/form", "web", http.Header{"Content-Length": {"0"}}},
		{"delete", "DELETE", "/item/7", "web", nil},
		{"options star", "OPTIONS", "*", "web", nil},
		{"hop fields dropped", "GET", "/", "web", http.Header{"Transfer-Encoding": {"chunked"}, "Trailer": {"X"}}},
		{"value with line break", "GET", "/", "web", http.Header{"X-Odd": {"a\r\nb "}}},
		{"non-ASCII host", "GET", "/", "bücher.example:8080", nil},
		{"IPv6 zone", "GET", "/", "[fe80::1%25eth0]:8080", nil},
		{"no host", "GET", "/", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mk := func() *http.Request {
				u := &url.URL{Path: tc.uri}
				if tc.uri != "*" {
					var err error
					if u, err = url.ParseRequestURI(tc.uri); err != nil {
						t.Fatal(err)
					}
				}
				return &http.Request{Method: tc.method, URL: u, Host: tc.host, Header: tc.header.Clone(), Body: http.NoBody}
			}
			sameOnWire(t, mk(), func(bw *bufio.Writer) error { return writeBodiless(bw, mk()) })
		})
	}
}

// writeHead must put on the wire what req.Write would for the same
// request, its fields as an http.Header (several cookie fields joined
// into one, as RFC 9113 section 8.2.3 has it), as a server reads it; and
// no user agent of its own.
func TestWriteHeadAsRequestWrite(t *testing.T) {
	for _, tc := range []struct {
		name, method, target, host string
		fields                     []hpack.HeaderField
		body                       string
	}{
		{"get", "GET", "/a/b?x=1&y=%20", "web", []hpack.HeaderField{{Name: "accept", Value: "*/*"}, {Name: "x-two", Value: "1"}, {Name: "x-two", Value: "2"}}, ""},
		{"user agents", "GET", "/", "web:8080", []hpack.HeaderField{{Name: "user-agent", Value: "first"}, {Name: "user-agent", Value: "second"}}, ""},
		{"empty user agent", "GET", "/", "web", []hpack.HeaderField{{Name: "user-agent", Value: ""}}, ""},
		{"cookies joined", "GET", "/", "web", []hpack.HeaderField{{Name: "cookie", Value: "a=1"}, {Name: "x", Value: "y"}, {Name: "cookie", Value: "b=2"}, {Name: "cookie", Value: "c=3"}}, ""},
		{"one cookie", "GET", "/", "web", []hpack.HeaderField{{Name: "cookie", Value: "a=1"}}, ""},
		{"post without body", "POST", "/form", "web", []hpack.HeaderField{{Name: "content-length", Value: "0"}}, ""},
		{"post with body", "POST", "/form", "web", []hpack.HeaderField{{Name: "content-length", Value: "99"}, {Name: "expect", Value: "100-continue"}}, "a=1&b=2"},
		{"options star", "OPTIONS", "*", "web", nil, ""},
		{"framing fields dropped", "GET", "/", "web", []hpack.HeaderField{{Name: "transfer-encoding", Value: "chunked"}, {Name: "trailer", Value: "x"}, {Name: "host", Value: "other"}}, ""},
		{"value with line break", "GET", "/", "web", []hpack.HeaderField{{Name: "x-odd", Value: "a\r\nb "}}, ""},
		{"IPv6 zone", "GET", "/", "[fe80::1%25eth0]:8080", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			header := http.Header{"User-Agent": {""}}
			var cookies []string
			for _, f := range tc.fields {
				switch k := http.CanonicalHeaderKey(f.Name); k {
				case "Cookie":
					cookies = append(cookies, f.Value)
				case "Expect", "Host":
				case "User-Agent":
					if header[k][0] == "" && len(header[k]) == 1 {
						header[k] = nil
					}
					header[k] = append(header[k], f.Value)
				default:
					header[k] = append(header[k], f.Value)
				}
			}
			if cookies != nil {
				header["Cookie"] = []string{strings.Join(cookies, "; ")}
			}
			u := &url.URL{Path: tc.target}
			if tc.target != "*" {
				var err error
				if u, err = url.ParseRequestURI(tc.target); err != nil {
					t.Fatal(err)
				}
			}
			req := &http.Request{Method: tc.method, URL: u, Host: tc.host, Header: header, Body: http.NoBody}
			h := &Head{Method: tc.method, Target: tc.target, Host: tc.host, Fields: tc.fields}
			if tc.body != "" {
				req.Body, req.ContentLength = io.NopCloser(strings.NewReader(tc.body)), int64(len(tc.body))
				h.Body = []byte(tc.body)
			}
			sameOnWire(t, req, func(bw *bufio.Writer) error { return writeHead(bw, h) })
		})
	}
}

// sameOnWire checks that write puts on the wire what req.Write would, as a
// server reads the two: method, target, host, fields, length and body.
func sameOnWire(t *testing.T, req *http.Request, write func(*bufio.Writer) error) {
	t.Helper()
	var want, got bytes.Buffer
	if err := req.Write(&want); err != nil {
		t.Fatal(err)
	}
	bw := bufio.NewWriter(&got)
	if err := write(bw); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	w, err := http.ReadRequest(bufio.NewReader(&want))
	if err != nil {
		t.Fatal(err)
	}
	g, err := http.ReadRequest(bufio.NewReader(&got))
	if err != nil {
		t.Fatalf("%v in %q", err, got.String())
	}
	wb, _ := io.ReadAll(w.Body)
	gb, _ := io.ReadAll(g.Body)
	if g.Method != w.Method || g.RequestURI != w.RequestURI || g.Host != w.Host || g.ContentLength != w.ContentLength ||
		!reflect.DeepEqual(g.Header, w.Header) || !bytes.Equal(gb, wb) {
		t.Errorf("wrote\n%q\nreq.Write writes\n%q", got.String(), want.String())
	}
}

func TestWriteBodilessRefusesBadHost(t *testing.T) {
	req := &http.Request{Method: "GET", URL: &url.URL{Path: "/"}, Host: "web\r\nX-Evil: 1", Header: http.Header{}}
	if err := writeBodiless(bufio.NewWriter(new(bytes.Buffer)), req); err == nil {
		t.Fatal("a Host with CRLF was written")
	}
}

// A request canceled just as its response arrives must not leave its
// connection in the pool with the deadline that ended it: the next request
// to take the connection would fail.
func TestCanceledRequestDoesNotPoisonThePool(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := &Client{Target: srv.Listener.Addr().String(), MaxIdle: 4, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &cancelOnRead{Conn: c, cancel: cancel, deadlineSet: make(chan struct{})}, nil
	}}
	defer a.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+a.Target+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := a.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "ok" {
		t.Fatalf("body %q, %v", b, err)
	}
	resp.Body.Close()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.idle) != 0 {
		t.Fatal("the connection of a request canceled as its response came went back to the pool")
	}
}

// cancelOnRead cancels the request when its response has been read from
// the socket, and returns the bytes only once the cancellation has set
// the connection's deadline: the response is buffered, the request gone.
type cancelOnRead struct {
	net.Conn
	cancel      func()
	once, set   sync.Once
	deadlineSet chan struct{}
}

func (c *cancelOnRead) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.once.Do(func() { c.cancel(); <-c.deadlineSet })
	}
	return n, err
}

func (c *cancelOnRead) SetDeadline(t time.Time) error {
	err := c.Conn.SetDeadline(t)
	c.set.Do(func() { close(c.deadlineSet) })
	return err
}

// The app client never writes a field name that is no token: it would
// let the app read the request's framing otherwise than the proxies did.
func TestAppClientRefusesBadFieldNames(t *testing.T) {
	for _, name := range []string{"X-A\r\nContent-Length", "X A", "X-A:", ""} {
		req, _ := http.NewRequest("GET", "http://web/", nil)
		req.Header[name] = []string{"1"}
		var b bytes.Buffer
		bw := bufio.NewWriter(&b)
		if err := writeBodiless(bw, req); err == nil {
			bw.Flush()
			t.Errorf("field name %q written:\n%s", name, b.String())
		}
	}
}

// An app that closes a kept connection after answering (without saying
// so) makes the next request on it find the connection ended before any
// byte of a response: one that may be sent twice goes again on a new
// connection; one that may not fails, as net/http's transport does.
func TestRequestOnAConnectionTheAppClosed(t *testing.T) {
	for _, c := range []struct {
		method, key string
		retried     bool
	}{
		{"GET", "", true},
		{"HEAD", "", true},
		{"POST", "", false},
		{"DELETE", "", false},
		{"POST", "k1", true},
	} {
		t.Run(c.method+c.key, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			closed := make(chan struct{}, 4)
			var conns atomic.Int32
			var serving sync.WaitGroup
			defer serving.Wait()
			defer l.Close()
			serving.Go(func() {
				for {
					nc, err := l.Accept()
					if err != nil {
						return
					}
					conns.Add(1)
					serving.Go(func() {
						defer nc.Close()
						br := bufio.NewReader(nc)
						if _, err := http.ReadRequest(br); err != nil {
							return
						}
						io.WriteString(nc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
						nc.Close()
						closed <- struct{}{}
					})
				}
			})
			a := &Client{Target: l.Addr().String(), MaxIdle: 4}
			defer a.CloseIdleConnections()
			do := func(method string) error {
				req, err := http.NewRequest(method, "http://"+a.Target+"/", nil)
				if err != nil {
					t.Fatal(err)
				}
				if c.key != "" {
					req.Header.Set("Idempotency-Key", c.key)
				}
				resp, err := a.RoundTrip(req)
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				if method != "HEAD" {
					if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "ok" {
						return fmt.Errorf("body %q, %v", b, err)
					}
				}
				return nil
			}
			if err := do("GET"); err != nil {
				t.Fatal(err)
			}
			<-closed // the kept connection is closed by the app now
			err = do(c.method)
			switch {
			case c.retried && err != nil:
				t.Fatalf("%s on a connection the app closed: %v, want it sent again on a new one", c.method, err)
			case c.retried && conns.Load() != 2:
				t.Fatalf("%d connections, want 2", conns.Load())
			case !c.retried && err == nil:
				t.Fatalf("%s sent again after the app closed without answering", c.method)
			}
		})
	}
}

// writeHead writes the request line as it is given: a method or target
// that would end the line early, or start another request, is refused
// before anything is written, as req.Write refuses an invalid method and
// escapes its URL.
func TestWriteHeadRefusesUnsafeRequestLine(t *testing.T) {
	for _, h := range []*Head{
		{Method: "GET", Target: "/a HTTP/1.1\r\nHost: x\r\n\r\nGET /admin", Host: "web"},
		{Method: "GET", Target: "/a\nb", Host: "web"},
		{Method: "GET", Target: "/a b", Host: "web"},
		{Method: "GET", Target: "/\x7f", Host: "web"},
		{Method: "GET", Target: "", Host: "web"},
		{Method: "GET / HTTP/1.1\r\n\r\nPOST", Target: "/", Host: "web"},
		{Method: "", Target: "/", Host: "web"},
	} {
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		err := writeHead(bw, h)
		bw.Flush()
		if err == nil || out.Len() > 0 {
			t.Errorf("%q %q: wrote %q, %v; want an error and nothing written", h.Method, h.Target, out.String(), err)
		}
	}
}

// An app that ends an idle kept connection with a lingering close (its
// side shut, reading on, answering nothing, as nginx does) gets the next
// request on a new connection at once: the request on the old one sees
// the end of the connection rather than waiting for an answer that
// cannot come (a connection idle that long is not written to with
// WriteAwait).
func TestRequestOnAConnectionTheAppLingersOn(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	shut := make(chan struct{}, 1)
	done := make(chan struct{})
	defer close(done)
	var conns atomic.Int32
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			first := conns.Add(1) == 1
			go func() {
				defer nc.Close()
				br := bufio.NewReader(nc)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(nc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				if first {
					nc.(*net.TCPConn).CloseWrite()
					shut <- struct{}{}
					io.Copy(io.Discard, br) // lingering: reads on, until the test ends
					<-done
				}
			}()
		}
	}()
	a := &Client{Target: l.Addr().String(), Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return netconn.Raw(c), nil
	}}
	defer a.CloseIdleConnections()
	get := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		fr, resp, err := a.RoundTripHead(ctx, &Head{Method: "GET", Target: "/", Host: "app"})
		if err != nil {
			return err
		}
		if resp != nil {
			resp.Body.Close()
			return nil
		}
		_, err = io.ReadAll(fr.Body)
		fr.Body.Close()
		return err
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	<-shut
	// Used over a second ago: as an idle connection an app closes.
	a.mu.Lock()
	for _, ac := range a.idle {
		ac.used = ac.used.Add(-2 * awaitFresh)
	}
	a.mu.Unlock()
	if err := get(); err != nil {
		t.Fatalf("the request after the app's lingering close: %v, want it sent again on a new connection", err)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}
