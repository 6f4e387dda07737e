package control

import "strings"

// Store layout, under the store's prefix. Kept in one place so that the
// watch that mirrors the store and the writers agree.
const (
	keyResources = "/resources/"
	keyInstances = "/instances/"
	keyStatus    = "/status/"
	keyTokens    = "/tokens/"
	keyBundle    = "/ca/bundle"
	keyIssuer    = "/ca/issuer" // a root rotation's state and new key (sealed)
	keySigner    = "/ca/signer" // the CA every server signs with, its key sealed (sharedca.go)
	keyBootstrap = "/bootstrap/admin"
	// keyFileTokens marks tokens from files that were stored once.
	keyFileTokens = "/bootstrap/file-tokens/"
	// keySessions holds the dashboard's sessions, by the hash of their
	// ID, each under a lease that ends with it.
	keySessions = "/sessions/"
	// keyServers holds the running servers, by their ID, each under a
	// lease that ends with it: where peers push traffic summaries.
	keyServers = "/servers/"
	// keyWrites holds a record of each API write, by its idempotency
	// key, under a lease: what fences a write off (write.go).
	keyWrites = "/writes/"
	// keyRegistrations holds each instance's registration record, under
	// the instance's lease: which lease, which stream (registration.go).
	keyRegistrations = "/registrations/"
	// keyRemembered holds the instances last registered, without a
	// lease: what a restarted control plane keeps in snapshots while
	// it warms up (warmup.go).
	keyRemembered = "/remembered/"
)

func resourceKey(kind, name string) string  { return keyResources + kind + "/" + name }
func instanceKey(service, id string) string { return keyInstances + service + "/" + id }

// statusKey is under the service, like instanceKey, so that a token for
// one service cannot write over another service's records.
func statusKey(service, id string) string { return keyStatus + service + "/" + id }
func tokenKey(hash string) string         { return keyTokens + hash }
func fileTokenKey(hash string) string     { return keyFileTokens + hash }
func sessionKey(hash string) string       { return keySessions + hash }
func serverKey(id string) string          { return keyServers + id }

func registrationKey(service, id string) string { return keyRegistrations + service + "/" + id }
func rememberedKey(service, id string) string   { return keyRemembered + service + "/" + id }

// splitKey returns the two path parts after prefix: "/resources/Service/a"
// -> "Service", "a".
func splitKey(key, prefix string) (string, string, bool) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return "", "", false
	}
	a, b, ok := strings.Cut(rest, "/")
	return a, b, ok
}
