package l4

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/trellis-mesh/trellis/internal/trellistest"
)

// gatherBytes scrapes reg and returns trellis_tcp_bytes_total by
// "direction/service/flow".
func gatherBytes(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "trellis_tcp_bytes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[label(m, "direction")+"/"+label(m, "service")+"/"+label(m, "flow")] = m.GetCounter().GetValue()
		}
	}
	return out
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// echoOnce writes n bytes on c and reads the n echoed back.
func echoOnce(t *testing.T, c net.Conn, n int) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go c.Write(make([]byte, n))
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
}

// A connection's bytes reach the counters while it is open: a scrape (or
// a traffic summary) of a long-lived connection sees what it moved so
// far, and closing it adds only the rest.
func TestBytesCountedWhileOpen(t *testing.T) {
	ca := trellistest.NewCA(t, "trellis.local")
	ch := newChain(t, ca, "web", "client", "web", allowAll)
	reg := ch.reg
	c, err := net.Dial("tcp", ch.client)
	if err != nil {
		t.Fatal(err)
	}
	const n = 100 << 10
	echoOnce(t, c, n)
	// The echo is back, so each side has forwarded n bytes each way; a
	// copier may count its last write just after the echo got through.
	trellistest.Eventually(t, 5*time.Second, "open connection counted", func() error {
		got := gatherBytes(t, reg)
		for _, k := range []string{"outbound/web/sent", "outbound/web/received", "inbound/client/received", "inbound/client/sent"} {
			if got[k] != n {
				return fmt.Errorf("%s = %v, want %d (all: %v)", k, got[k], n, got)
			}
		}
		return nil
	})
	echoOnce(t, c, n)
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
	c.Close()
	trellistest.Eventually(t, 5*time.Second, "closed connection counted once", func() error {
		got := gatherBytes(t, reg)
		for _, k := range []string{"outbound/web/sent", "outbound/web/received", "inbound/client/received", "inbound/client/sent"} {
			if got[k] != 2*n {
				return fmt.Errorf("%s = %v, want %d (all: %v)", k, got[k], 2*n, got)
			}
		}
		return nil
	})
}

// The same for a Join between plain sockets (edge and pass-through).
func TestJoinCountedWhileOpen(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	app := echoApp(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		up, err := net.Dial("tcp", app)
		if err != nil {
			return
		}
		defer up.Close()
		m.Join("passthrough", "api", c, up, 0, 5)
	}()
	t.Cleanup(func() { l.Close(); <-done })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 64 << 10
	echoOnce(t, c, n)
	trellistest.Eventually(t, 5*time.Second, "open connection counted", func() error {
		got := gatherBytes(t, reg)
		if got["passthrough/api/received"] != n+5 || got["passthrough/api/sent"] != n {
			return fmt.Errorf("received %v, sent %v; want %d, %d", got["passthrough/api/received"], got["passthrough/api/sent"], n+5, n)
		}
		return nil
	})
}
