// Command app is the unmodified app of the tls-sidecar example: it speaks
// plain HTTP on 127.0.0.1:$PORT and knows nothing of TLS. Its sidecar's
// edge listener terminates TLS in front of it.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// r.TLS is nil: the app sees plain HTTP.
		fmt.Fprintln(w, "Hello from behind Trellis TLS proxy!")
	})
	addr := "127.0.0.1:" + os.Getenv("PORT")
	log.Printf("app listening on %s (plain HTTP)", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
