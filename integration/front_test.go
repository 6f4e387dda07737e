//go:build linux

package integration

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// frontWeb applies what the listener tests share: a Service web of
// protocol http that every service may call, and a Gateway front whose
// listeners are given as YAML list items (one string each, "- port: ..."
// and the lines under it, indented as under spec.listeners).
func frontWeb(t *testing.T, s *server, listeners ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("kind: Service\nname: web\nspec: {protocol: http}\n---\n" +
		"kind: Intention\nname: \"*.web\"\nspec: {source: \"*\", destination: web, action: allow}\n---\n" +
		"kind: Gateway\nname: front\nspec:\n  listeners:\n")
	for _, l := range listeners {
		for _, line := range strings.Split(strings.TrimRight(l, "\n"), "\n") {
			b.WriteString("    " + line + "\n")
		}
	}
	applyYAML(t, s, b.String())
}

// frontHTTP is a gateway listener on port routing every path to web.
func frontHTTP(port int) string {
	return fmt.Sprintf("- port: %d\n  protocol: http\n  routes: [{pathPrefix: /, service: web}]", port)
}

// frontHTTPS is frontHTTP over TLS with a mesh certificate for
// web.example.test.
func frontHTTPS(port int) string {
	return fmt.Sprintf("- port: %d\n  protocol: https\n  tls: {source: mesh, dnsNames: [web.example.test]}\n"+
		"  routes: [{pathPrefix: /, service: web}]", port)
}

// startFront starts gateway front on loopback and returns it with its
// admin address.
func (s *server) startFront(t *testing.T) (*proc, string) {
	t.Helper()
	admin := "127.0.0.1:" + strconv.Itoa(trellistest.FreePort(t))
	_, port, _ := strings.Cut(admin, ":")
	gw := start(t, "gateway", nil, "gateway", "--name", "front", "--listen-addr", "127.0.0.1",
		"--server", s.addr, "--ca-file", s.caFile, "--token-file", s.tokenFile(t, "front"),
		"--admin-port", port, "--log-level", "debug")
	return gw, admin
}
