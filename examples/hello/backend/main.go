// Command backend is hello-backend of the hello example: GET /data answers
// JSON with a greeting, a message and the version and instance that
// answered. Run it twice with different TRELLIS_VERSION and GREETING to see
// a canary.
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
)

type data struct {
	Greeting string `json:"greeting"`
	Message  string `json:"message"`
	Version  string `json:"version"`
	Instance string `json:"instance"`
}

func main() {
	d := data{
		Greeting: os.Getenv("GREETING"),
		Message:  "served by hello-backend " + os.Getenv("TRELLIS_VERSION"),
		Version:  os.Getenv("TRELLIS_VERSION"),
		Instance: os.Getenv("TRELLIS_INSTANCE"),
	}
	if d.Greeting == "" {
		d.Greeting = "Hello"
	}
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("GET /data", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(d)
	})
	addr := "127.0.0.1:" + os.Getenv("PORT")
	log.Printf("hello-backend %s (%s) listening on %s", d.Instance, d.Version, addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
