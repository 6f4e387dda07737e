package sidecar

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxy/l4"
	"github.com/trellis-mesh/trellis/internal/proxy/l7"
	"github.com/trellis-mesh/trellis/internal/stats"
	"github.com/trellis-mesh/trellis/internal/trellistest"
)

func testSummarizer() (*summarizer, *Proxy) {
	p := &Proxy{cfg: Config{Service: "web", Instance: "web-1", Version: "v2", StatsInterval: 5 * time.Second},
		l7m: l7.NewMetrics(nil), l4m: l4.NewMetrics(nil)}
	return &summarizer{p: p}, p
}

// A summary holds what the proxy's own counters gained since the last
// one, by key; what was counted before the baseline is not reported.
func TestSummaryFromCounters(t *testing.T) {
	z, p := testSummarizer()
	req := p.l7m.Requests.WithLabelValues("outbound", "web", "api", "default", "v1", "200")
	req.Add(1000) // before the stream: not reported
	t0 := time.Unix(1_000_000_000, 0)
	z.baseline(t0)

	req.Add(7)
	p.l7m.Requests.WithLabelValues("outbound", "web", "api", "default", "v1", "503").Add(2)
	p.l7m.Duration.WithLabelValues("outbound", "web", "api", "default", "v1", "200").Observe(0.003)
	p.l7m.Duration.WithLabelValues("outbound", "web", "api", "default", "v1", "503").Observe(60)
	p.l7m.Retries.WithLabelValues("web", "api", "default").Add(3)
	p.l7m.Requests.WithLabelValues("inbound", "gw", "web", "", "", "200").Add(4)
	p.l7m.Requests.WithLabelValues("edge", "", "web", "", "", "404").Add(1)
	p.l7m.Requests.WithLabelValues("ingress", "web:8080", "", "", "", "404").Add(1)
	p.l7m.Refused.WithLabelValues("inbound", "gw", "web", "no_intention").Add(2)
	p.l7m.Refused.WithLabelValues("inbound", "gw", "web", "bad_path").Add(5) // not a denial
	p.l4m.Bytes.WithLabelValues("outbound", "db", "sent").Add(100)
	p.l4m.Bytes.WithLabelValues("outbound", "db", "received").Add(50)
	p.l4m.Connections.WithLabelValues("outbound", "db", "ok").Add(2)
	p.l4m.Denied.WithLabelValues("gw", "intention").Add(1)
	p.l4m.Connections.WithLabelValues("passthrough", "", "ok").Add(9) // no known peer: no edge

	if s := z.take(t0.Add(time.Second)); s != nil {
		t.Fatalf("after 1s of a 5s interval: got a summary, want none yet")
	}
	s := z.take(t0.Add(5 * time.Second))
	if s == nil {
		t.Fatal("got no summary")
	}
	if s.IntervalMS != 5000 || s.Service != "web" || s.Instance != "web-1" {
		t.Errorf("got interval %d ms for %s/%s, want 5000 for web/web-1", s.IntervalMS, s.Service, s.Instance)
	}
	if err := s.Validate(); err != nil {
		t.Fatalf("invalid summary: %v", err)
	}
	got := map[stats.Key]stats.Counts{}
	for _, e := range s.Entries {
		got[e.Key] = e.Counts
	}
	api := got[stats.Key{Direction: stats.Outbound, Source: "web", Destination: "api", Route: "default", Version: "v1"}]
	if api.Codes[1] != 7 || api.Codes[4] != 2 {
		t.Errorf("web->api codes: got %v, want 7 2xx and 2 5xx (the 1000 before the baseline left out)", api.Codes)
	}
	if api.Latency[3] != 1 || api.Latency[stats.NumBuckets-1] != 1 {
		t.Errorf("web->api latency: got %v, want one in bucket 3 and one in the last", api.Latency)
	}
	if r := got[stats.Key{Direction: stats.Outbound, Source: "web", Destination: "api", Route: "default"}]; r.Retries != 3 {
		t.Errorf("retries: got %d, want 3", r.Retries)
	}
	gw := got[stats.Key{Direction: stats.Inbound, Source: "gw", Destination: "web", Version: "v2"}]
	if gw.Codes[1] != 4 || gw.Denied != 3 {
		t.Errorf("gw->web: got codes %v and %d denied, want 4 2xx and 3 denied", gw.Codes, gw.Denied)
	}
	outside := got[stats.Key{Direction: stats.Inbound, Destination: "web", Version: "v2"}]
	if outside.Codes[3] != 2 {
		t.Errorf("outside->web: got codes %v, want 2 4xx (edge and ingress)", outside.Codes)
	}
	db := got[stats.Key{Direction: stats.Outbound, Source: "web", Destination: "db"}]
	if db.BytesSent != 100 || db.BytesReceived != 50 || db.Connections != 2 {
		t.Errorf("web->db: got %+v, want 100 sent, 50 received, 2 connections", db)
	}
	if len(got) != 5 {
		t.Errorf("got %d keys, want 5: %v", len(got), got)
	}

	// Nothing new: no summary. Then only what is new.
	if s := z.take(t0.Add(10 * time.Second)); s != nil {
		t.Errorf("nothing counted: got %+v, want no summary", s)
	}
	req.Add(1)
	s = z.take(t0.Add(15 * time.Second))
	if s == nil || len(s.Entries) != 1 || s.Entries[0].Codes[1] != 1 {
		t.Errorf("got %+v, want one entry of one request", s)
	}
}

// Heavy traffic to many destinations makes a summary of bounded size.
func TestSummaryBoundedUnderLoad(t *testing.T) {
	z, p := testSummarizer()
	t0 := time.Unix(1_000_000_000, 0)
	z.baseline(t0)
	for i := range 5000 {
		for _, code := range []string{"200", "503"} {
			p.l7m.Requests.WithLabelValues("outbound", "web", fmt.Sprintf("svc-%d", i), "default", "v1", code).Add(float64(1000 + i))
			p.l7m.Duration.WithLabelValues("outbound", "web", fmt.Sprintf("svc-%d", i), "default", "v1", code).Observe(0.01)
		}
	}
	s := z.take(t0.Add(5 * time.Second))
	if s == nil {
		t.Fatal("got no summary")
	}
	if len(s.Entries) > stats.MaxEntries || s.Folded != 5000-(stats.MaxEntries-2) {
		t.Errorf("got %d entries, %d folded; want at most %d, %d folded", len(s.Entries), s.Folded, stats.MaxEntries, 5000-(stats.MaxEntries-2))
	}
	b, err := s.Encode()
	if err != nil || len(b) > stats.MaxSummaryBytes {
		t.Fatalf("encoded: %d bytes, %v; want at most %d", len(b), err, stats.MaxSummaryBytes)
	}
	t.Logf("5,000 destinations: %d entries, %d bytes", len(s.Entries), len(b))
}

// A long-lived connection's bytes are in every summary of its life, not
// in one burst when it closes.
func TestSummaryCountsOpenConnections(t *testing.T) {
	z, p := testSummarizer()
	t0 := time.Unix(1_000_000_000, 0)
	z.baseline(t0)
	client, peerSide := net.Pipe()
	local, app := net.Pipe()
	joined := make(chan struct{})
	go func() {
		defer close(joined)
		p.l4m.Join("outbound", "db", peerSide, local, 0, 0)
	}()
	defer func() { client.Close(); app.Close(); <-joined }()
	go client.Write(make([]byte, 1000))
	if _, err := io.ReadFull(app, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	trellistest.Eventually(t, 5*time.Second, "the open connection's bytes in a summary", func() error {
		t0 = t0.Add(5 * time.Second)
		s := z.take(t0)
		if s == nil {
			return fmt.Errorf("no summary")
		}
		for _, e := range s.Entries {
			if e.Destination == "db" && e.BytesReceived == 1000 {
				return nil
			}
		}
		return fmt.Errorf("summary %+v has no 1000 bytes to db", s.Entries)
	})
}
