package l7

import (
	"io"
	"net"
	"net/http"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	v1 "github.com/trellis-mesh/trellis/api/v1"
	"github.com/trellis-mesh/trellis/internal/proxy/balance"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// framingApp answers /204 and /304 without a body or a Content-Length
// (as net/http's server does), and /trailers with a body of known length
// and a trailer it did not announce (which HTTP/2 can carry).
func framingApp(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/204":
		w.WriteHeader(http.StatusNoContent)
	case "/304":
		w.Header().Set("ETag", `"v1"`)
		w.WriteHeader(http.StatusNotModified)
	case "/trailers":
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
		w.Header().Set(http.TrailerPrefix+"X-T", "t")
	}
}

// A bodiless response (204, 304) gains no Content-Length on its way: on a
// 304 it would claim the representation is empty (RFC 9110 section
// 8.6), on a 204 it is forbidden. An HTTP/2 app's trailers after a body
// of known length reach an HTTP/2 client.
func TestBodilessFramingAndTrailersRelayed(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	h1app := startApp(t, "web")
	h1app.serve = framingApp
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h2c.NewHandler(http.HandlerFunc(framingApp), &http2.Server{})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	clients := map[string]*http.Client{"HTTP/1.1": {}, "HTTP/2": {Transport: &http.Transport{Protocols: &h2}}}
	for _, app := range []struct{ name, addr, protocol string }{
		{"h1 app", h1app.addr, v1.ProtocolHTTP},
		{"h2c app", l.Addr().String(), v1.ProtocolHTTP2},
	} {
		in := startInboundFor(t, ca, app.addr, app.protocol, allowAll)
		url, _ := startOutbound(t, ca, static(mustCompile(t, nil), balance.Endpoint{Addr: in, Instance: "web-1"}))
		for proto, c := range clients {
			for _, path := range []string{"/204", "/304"} {
				resp, err := c.Get(url + path)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if v, ok := resp.Header["Content-Length"]; ok || resp.StatusCode != 204 && resp.StatusCode != 304 {
					t.Errorf("%s, %s client, %s: status %d, Content-Length %q", app.name, proto, path, resp.StatusCode, v)
				}
			}
			if app.protocol != v1.ProtocolHTTP2 || proto != "HTTP/2" {
				continue // HTTP/1.1 carries no trailers after a body of known length
			}
			resp, err := c.Get(url + "/trailers")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "ok" || resp.Trailer.Get("X-T") != "t" {
				t.Errorf("%s, %s client: body %q, trailers %v", app.name, proto, b, resp.Trailer)
			}
		}
	}
}
