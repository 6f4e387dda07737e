// Command frontend is the frontend of the cross-VPC example. GET / calls
// crystal and nodejs by the names the App Mesh workshop gave them and shows
// which instance, in which network, answered each. It uses no mesh library:
// the names resolve through the sidecar's DNS (the host's resolver on a VM,
// or TRELLIS_DNS when several instances share one machine under trellis up),
// and the calls are plain HTTP to them.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// backends are the URLs the frontend calls, as an App Mesh app had them.
var backends = []string{
	"http://crystal.appmeshworkshop.hosted.local:3000/",
	"http://nodejs.appmeshworkshop.hosted.local:3000/",
}

type result struct {
	URL    string  `json:"url"`
	Status int     `json:"status,omitempty"`
	Answer *answer `json:"answer,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// answer is what a backend says of itself.
type answer struct {
	Service  string `json:"service"`
	Instance string `json:"instance"`
	Version  string `json:"version,omitempty"`
	Network  string `json:"network"`
	Caller   string `json:"caller"`
}

type page struct {
	Frontend string   `json:"frontend"`
	Network  string   `json:"network"`
	Backends []result `json:"backends"`
}

func main() {
	client := &http.Client{Timeout: 5 * time.Second}
	if dns := os.Getenv("TRELLIS_DNS"); dns != "" {
		// Several frontends on one machine cannot all own its resolver:
		// each asks its own sidecar, as a VM's resolv.conf would.
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, dns)
		}}
		client.Transport = &http.Transport{DialContext: (&net.Dialer{Resolver: r}).DialContext}
	}
	me := page{Frontend: os.Getenv("TRELLIS_INSTANCE"), Network: os.Getenv("TRELLIS_NETWORK")}
	http.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		p := me
		for _, u := range backends {
			p.Backends = append(p.Backends, call(r.Context(), client, u))
		}
		if strings.Contains(r.Header.Get("Accept"), "text/html") {
			writeHTML(w, p)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(p)
	})
	addr := "127.0.0.1:" + os.Getenv("PORT")
	log.Printf("frontend %s (network %s) listening on %s", me.Frontend, me.Network, addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}

func call(ctx context.Context, c *http.Client, url string) result {
	res := result{URL: url}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	resp, err := c.Do(req)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	res.Status = resp.StatusCode
	var a answer
	switch {
	case err != nil:
		res.Error = err.Error()
	case resp.StatusCode == http.StatusOK && json.Unmarshal(body, &a) == nil:
		res.Answer = &a
	default:
		res.Error = strings.TrimSpace(string(body))
	}
	return res
}

// pageHTML shows the page to a browser; html/template escapes what the
// backends said.
var pageHTML = template.Must(template.New("page").Parse(`<!doctype html>
<title>cross-vpc</title>
<h1>frontend {{.Frontend}} (network {{.Network}})</h1>
<ul>{{range .Backends}}
<li>{{.URL}}: {{with .Answer}}answered by <b>{{.Instance}}</b> in network <b>{{.Network}}</b>, which saw the caller as {{.Caller}}{{else}}<b>failed</b> {{.Status}} {{.Error}}{{end}}</li>{{end}}
</ul>
`))

func writeHTML(w http.ResponseWriter, p page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pageHTML.Execute(w, p); err != nil {
		log.Printf("page: %v", err)
	}
}
