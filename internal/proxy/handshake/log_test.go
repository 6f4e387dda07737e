package handshake

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

type lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lines) records(t *testing.T) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

type fakeConn struct{ net.Conn }

func (fakeConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 4242} }
func (fakeConn) LocalAddr() net.Addr  { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 15001} }

// A flood of failed handshakes writes PerSecond lines a second; the next
// line written says how many were held back.
func TestFailuresAreRateLimited(t *testing.T) {
	var out lines
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := &Log{Logger: slog.New(slog.NewJSONHandler(&out, nil)), PerSecond: 3, Now: func() time.Time { return now }}
	for range 100 {
		l.Failed(fakeConn{}, nil, errors.New("x509: certificate signed by unknown authority"))
	}
	if got := len(out.records(t)); got != 3 {
		t.Fatalf("%d lines for 100 failures in one second, want 3", got)
	}
	now = now.Add(1100 * time.Millisecond)
	l.Failed(fakeConn{}, nil, errors.New("tls: client didn't provide a certificate"))
	recs := out.records(t)
	if len(recs) != 4 {
		t.Fatalf("%d lines after the next second began, want 4", len(recs))
	}
	last := recs[3]
	if last["suppressed"] != float64(97) {
		t.Errorf("suppressed = %v, want 97", last["suppressed"])
	}
	for k, want := range map[string]string{"level": "INFO", "msg": "TLS handshake failed", "remote": "192.0.2.7:4242", "local": "127.0.0.1:15001", "err": "tls: client didn't provide a certificate"} {
		if last[k] != want {
			t.Errorf("%s = %v, want %q", k, last[k], want)
		}
	}
}

func TestNilLogDiscards(t *testing.T) {
	var l *Log
	l.Failed(fakeConn{}, nil, errors.New("x"))
	(&Log{}).Failed(fakeConn{}, nil, errors.New("x"))
}
