// Command greeting answers every request with a greeting and its instance
// name: "Hello (greeting-1)". Part of the greeter example.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	inst := os.Getenv("TRELLIS_INSTANCE")
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello (%s)", inst)
	})
	addr := "127.0.0.1:" + os.Getenv("PORT")
	log.Printf("greeting %s listening on %s", inst, addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
