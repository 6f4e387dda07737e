// Command web is hello-web of the hello example: GET /hello/NAME calls
// hello-backend's GET /data through its sidecar and answers HTML. It
// passes the request's trace context and request ID on to that call, so
// that with tracing on (--otlp-endpoint) the call joins the request's trace.
package main

import (
	"encoding/json"
	"fmt"
	"html/template"
	"log"
	"net/http"
	"os"
	"time"
)

var page = template.Must(template.New("hello").Parse(`<!doctype html>
<title>Hello</title>
<h1>{{.Greeting}}, {{.Name}}!</h1>
<p>{{.Message}} (instance {{.Instance}}).</p>
`))

func main() {
	backend := "http://" + os.Getenv("UPSTREAM_HELLO_BACKEND")
	client := &http.Client{Timeout: 5 * time.Second}
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("GET /hello/{name}", func(w http.ResponseWriter, r *http.Request) {
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, backend+"/data", nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		for _, k := range []string{"Traceparent", "Tracestate", "X-Request-Id"} {
			if v := r.Header.Get(k); v != "" {
				req.Header.Set(k, v)
			}
		}
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, "hello-backend: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			http.Error(w, "hello-backend answered "+resp.Status, http.StatusBadGateway)
			return
		}
		var d struct {
			Greeting, Message, Version, Instance string
			Name                                 string `json:"-"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
			http.Error(w, "hello-backend: "+err.Error(), http.StatusBadGateway)
			return
		}
		d.Name = r.PathValue("name")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("X-Backend-Version", d.Version)
		page.Execute(w, d)
	})
	addr := "127.0.0.1:" + os.Getenv("PORT")
	log.Printf("hello-web listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
