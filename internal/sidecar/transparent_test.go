package sidecar

import (
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestSniffHost(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		host   string
	}{
		{"request", []string{"GET /x HTTP/1.1\r\nHost: backend:8080\r\nAccept: */*\r\n\r\n"}, "backend:8080"},
		{"split head", []string{"POST /", "x HTTP/1.1\r\nHo", "st: backend.mesh.local\r\n", "\r\nbody"}, "backend.mesh.local"},
		{"absolute form", []string{"GET http://backend/x HTTP/1.1\r\nHost: other\r\n\r\n"}, "backend"},
		{"binary", []string{"\x16\x03\x01\x00\x10"}, ""},
		{"lower-case method", []string{"get / HTTP/1.1\r\nHost: b\r\n\r\n"}, ""},
		{"h2 preface", []string{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"}, ""},
		{"closed early", []string{"GET / HTTP/1.1\r\nHost: b\r\n"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			all := strings.Join(tc.writes, "")
			go func() {
				// A net.Pipe write returns once read: each arrives
				// on its own, never merged with the next.
				for _, w := range tc.writes {
					client.Write([]byte(w))
				}
				client.Close()
			}()
			pc, host := sniffHost(server)
			if host != tc.host {
				t.Errorf("host = %q, want %q", host, tc.host)
			}
			// Whatever was read to decide is still there for the upstream.
			b, _ := io.ReadAll(pc)
			if string(b) != all {
				t.Errorf("replayed %q, want %q", b, all)
			}
		})
	}
}

func TestSniffHostTooLong(t *testing.T) {
	client, server := net.Pipe()
	go func() {
		client.Write([]byte("GET / HTTP/1.1\r\nX: " + strings.Repeat("a", maxSniff) + "\r\n\r\n"))
	}()
	defer client.Close()
	if _, host := sniffHost(server); host != "" {
		t.Errorf("a head over %d bytes gave host %q, want none", maxSniff, host)
	}
}

func TestServiceOfHost(t *testing.T) {
	dp := &dataPlane{upstreams: []*upstream{{service: "backend"}, {service: "pay.v2"}}}
	for host, want := range map[string]string{
		"backend":                            "backend",
		"backend:8080":                       "backend",
		"BACKEND.default.svc.cluster.local.": "backend",
		"pay.v2":                             "pay.v2",
		"10.0.0.7:80":                        "10",
		"[fd00::1]:80":                       "fd00::1",
	} {
		if got := serviceOfHost(host, dp); got != want {
			t.Errorf("serviceOfHost(%q) = %q, want %q", host, got, want)
		}
	}
}

func TestIndexAddr(t *testing.T) {
	idx := map[netip.Addr]string{}
	indexAddr(idx, "10.0.0.1", "a")
	indexAddr(idx, "10.0.0.1", "a")
	indexAddr(idx, "::ffff:10.0.0.2", "b")
	indexAddr(idx, "10.0.0.3", "a")
	indexAddr(idx, "10.0.0.3", "c")
	indexAddr(idx, "not-an-ip", "d")
	want := map[string]string{"10.0.0.1": "a", "10.0.0.2": "b", "10.0.0.3": ""}
	if len(idx) != len(want) {
		t.Errorf("index %v, want %v", idx, want)
	}
	for a, s := range want {
		if got, ok := idx[netip.MustParseAddr(a)]; !ok || got != s {
			t.Errorf("%s -> %q (%v), want %q", a, got, ok, s)
		}
	}
}
