// Command backend is crystal and nodejs of the cross-VPC example: GET /
// answers JSON naming the service, instance, version and network that
// answered, and the caller's identity as its sidecar handed it over.
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
)

type answer struct {
	Service  string `json:"service"`
	Instance string `json:"instance"`
	Version  string `json:"version,omitempty"`
	Network  string `json:"network"`
	// Caller is the X-Forwarded-Client-Cert field the sidecar sets: the
	// calling service's SPIFFE ID, never what the caller sent.
	Caller string `json:"caller"`
}

func main() {
	me := answer{
		Service:  os.Getenv("TRELLIS_SERVICE"),
		Instance: os.Getenv("TRELLIS_INSTANCE"),
		Version:  os.Getenv("TRELLIS_VERSION"),
		Network:  os.Getenv("TRELLIS_NETWORK"),
	}
	http.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		a := me
		a.Caller = r.Header.Get("X-Forwarded-Client-Cert")
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a)
	})
	addr := "127.0.0.1:" + os.Getenv("PORT")
	log.Printf("%s %s (network %s) listening on %s", me.Service, me.Instance, me.Network, addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
