package sidecar

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// The wait between rounds is full jitter under a ceiling that doubles from
// 250ms to 5s: never more than 5s (a proxy is back within seconds of a
// server), spread down to zero (proxies do not return in lockstep).
func TestReconnectDelay(t *testing.T) {
	for _, tc := range []struct {
		round   int
		ceiling time.Duration
	}{
		{1, 250 * time.Millisecond},
		{2, 500 * time.Millisecond},
		{3, time.Second},
		{5, 4 * time.Second},
		{6, 5 * time.Second},
		{40, 5 * time.Second},
		{1 << 30, 5 * time.Second},
	} {
		lo, hi := tc.ceiling, time.Duration(0)
		for range 2000 {
			d := reconnectDelay(tc.round)
			lo, hi = min(lo, d), max(hi, d)
		}
		if hi > tc.ceiling || lo < 0 {
			t.Errorf("round %d: delays in [%v, %v], want within [0, %v]", tc.round, lo, hi, tc.ceiling)
		}
		if hi < tc.ceiling*9/10 || lo > tc.ceiling/10 {
			t.Errorf("round %d: delays in [%v, %v], want spread over [0, %v]", tc.round, lo, hi, tc.ceiling)
		}
	}
}

func TestResolveTargets(t *testing.T) {
	lookup := func(_ context.Context, host string) ([]string, error) {
		switch host {
		case "cp.example":
			return []string{"10.0.0.1", "10.0.0.2", "fd00::3"}, nil
		case "again.example":
			return []string{"10.0.0.2"}, nil
		}
		return nil, errors.New("no such host")
	}
	got, err := resolveTargets(t.Context(), []string{"cp.example:7700", "10.0.0.9:7700", "gone.example:7700", "again.example:7700", "[::1]:7700"}, lookup)
	want := []target{
		{"cp.example:7700", "10.0.0.1:7700"},
		{"cp.example:7700", "10.0.0.2:7700"},
		{"cp.example:7700", "[fd00::3]:7700"},
		{"10.0.0.9:7700", "10.0.0.9:7700"},
		{"[::1]:7700", "[::1]:7700"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if err == nil || !strings.Contains(err.Error(), "gone.example:7700") {
		t.Errorf("err = %v, want one naming gone.example:7700", err)
	}
}

// pickTarget spreads over the addresses not tried yet, and says when none
// is left.
func TestPickTarget(t *testing.T) {
	ts := []target{{"a:1", "10.0.0.1:1"}, {"a:1", "10.0.0.2:1"}, {"b:1", "10.0.0.3:1"}}
	seen := map[string]int{}
	for range 300 {
		p, ok := pickTarget(ts, map[string]bool{"10.0.0.2:1": true})
		if !ok {
			t.Fatal("none picked")
		}
		seen[p.addr]++
	}
	if seen["10.0.0.2:1"] != 0 || seen["10.0.0.1:1"] < 50 || seen["10.0.0.3:1"] < 50 {
		t.Errorf("picks %v, want both untried addresses, often, and never the tried one", seen)
	}
	if p, ok := pickTarget(ts, map[string]bool{"10.0.0.1:1": true, "10.0.0.2:1": true, "10.0.0.3:1": true}); ok {
		t.Errorf("picked %v with all tried", p)
	}
}
