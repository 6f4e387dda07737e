// Command name answers every request with a random name and its instance
// name: "Alexandrea (name-1)". Part of the greeter example.
package main

import (
	"fmt"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
)

var names = []string{"Alexandrea", "Bartholomew", "Carmen", "Dmitri", "Esperanza", "Fitzgerald", "Guinevere", "Hiroshi"}

func main() {
	inst := os.Getenv("TRELLIS_INSTANCE")
	http.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s (%s)", names[rand.IntN(len(names))], inst)
	})
	addr := "127.0.0.1:" + os.Getenv("PORT")
	log.Printf("name %s listening on %s", inst, addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
