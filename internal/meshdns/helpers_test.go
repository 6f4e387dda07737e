package meshdns

import (
	"context"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// serve runs h on a loopback port until the test ends and returns the
// address.
func serve(t *testing.T, h dns.Handler) string {
	t.Helper()
	ls, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ls, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ls.Addr()
}

// ask sends one query over network (udp or tcp), with EDNS0 when edns >
// 0, and returns the answer.
func ask(t *testing.T, addr, network, name string, qtype uint16, edns uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	return r
}

// raw sends b over TCP and returns the answer's bytes, or nil when there
// is none: a valid query sent after b on the same connection is answered
// first (a TCP connection's queries are answered in order), so a dropped
// query is seen without waiting for a timeout.
func raw(t *testing.T, addr string, b []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	probe := new(dns.Msg)
	probe.SetQuestion("probe.outside.test.", dns.TypeA)
	probe.Id = 0xfeed
	pb, _ := probe.Pack()
	var out []byte
	for _, m := range [][]byte{b, pb} {
		out = append(out, byte(len(m)>>8), byte(len(m)))
		out = append(out, m...)
	}
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("read: %v", err)
	}
	buf := make([]byte, int(hdr[0])<<8|int(hdr[1]))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	if len(buf) >= 2 && buf[0] == 0xfe && buf[1] == 0xed {
		return nil // the probe's: b got none
	}
	return buf
}

// dialFrom dials from ip, another loopback address than the default.
func dialFrom(t *testing.T, ip string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
}

func writeFile(t *testing.T, name, s string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
