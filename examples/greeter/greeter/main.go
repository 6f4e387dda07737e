// Command greeter calls greeting and name through its sidecar's local
// upstream listeners (UPSTREAM_GREETING, UPSTREAM_NAME) and combines them:
// "From greeter-1: Hello (greeting-1) Alexandrea (name-1)". Part of the
// greeter example.
package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	inst := os.Getenv("TRELLIS_INSTANCE")
	greeting, name := os.Getenv("UPSTREAM_GREETING"), os.Getenv("UPSTREAM_NAME")
	hc := &http.Client{Timeout: 5 * time.Second}
	get := func(addr string) (string, error) {
		resp, err := hc.Get("http://" + addr + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		g, err := get(greeting)
		if err != nil {
			http.Error(w, "greeting: "+err.Error(), http.StatusBadGateway)
			return
		}
		n, err := get(name)
		if err != nil {
			http.Error(w, "name: "+err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintf(w, "From %s: %s %s\n", inst, g, n)
	})
	addr := "127.0.0.1:" + os.Getenv("PORT")
	log.Printf("greeter %s listening on %s", inst, addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
