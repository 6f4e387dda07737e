package l7

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// observe counts each request in the series of its own labels, the same
// whether its series was looked up before or not.
func TestObserveCountsBySeries(t *testing.T) {
	m := NewMetrics(nil)
	start := time.Now()
	for _, o := range []struct {
		route string
		code  int
	}{{"default", 200}, {"default", 200}, {"default", 503}, {"api", 200}, {"default", 200}} {
		m.observe("outbound", "client", "web", o.route, "", o.code, start)
	}
	for _, c := range []struct {
		route, code string
		want        float64
	}{{"default", "200", 3}, {"default", "503", 1}, {"api", "200", 1}, {"api", "503", 0}} {
		if got := testutil.ToFloat64(m.Requests.WithLabelValues("outbound", "client", "web", c.route, "", c.code)); got != c.want {
			t.Errorf("requests of route %s code %s = %v, want %v", c.route, c.code, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.Duration); n != 3 {
		t.Errorf("%d duration series, want 3", n)
	}
}
